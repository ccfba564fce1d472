"""Preparing the host the lab runs on: the Debian packages and daemons it needs, with the
standard library only (`python -m lab.host prepare`)."""
