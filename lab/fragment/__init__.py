"""Fragmenting guest memory on demand: the profiles and the typed results of the guest
fragmenter, and the driver that runs it and asks the allocator what it can still give."""
