"""The lab's pytest plugin (lab.pytest_plugin.plugin) comes from the installed package's
`pytest11` entry point (pyproject.toml), never from here: pytest refuses to register it
twice."""
