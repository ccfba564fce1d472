"""The pytest plugin that runs the suites on a lab: options, the lab session, per-node fixtures
and the markers that say what a test needs."""
