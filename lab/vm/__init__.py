"""The virtual machines through libvirt: domain XML, start and stop, the accelerator probe and
the reaper of leftover domains."""
