"""The host the lab runs on: preparing it (`python -m lab.host prepare`, standard library
only), its 1 GiB huge-page pool, its session lock and live runs, its QEMU processes.
Imports nothing, so that `prepare` needs no dependency."""
