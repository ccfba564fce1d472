"""The virtual machines through libvirt: what a domain is made of and its XML, the libvirt
calls, waiting for a guest to be ready, and the choice of accelerator."""
