"""The device under test in a guest: the vrhp module built for the node's exact kernel and
loaded, its agent daemon, and the flow traffic run against it."""
