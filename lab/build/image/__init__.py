"""Guest images: the `minimal` busybox initramfs and the `debian` root filesystem, each built
for one kernel and cached by everything that shapes it."""
