"""The host the lab runs on: preparing it (the Debian packages and daemons it needs, with the
standard library only: `python -m lab.host prepare`), its 1 GiB huge-page pool, and a look
into the QEMU processes on it. Imports nothing, so that `prepare` needs no dependency."""
