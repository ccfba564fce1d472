"""What a guest is made of, built on the host before it boots: kernels (Debian, local, debug)
and their configs, guest images and the static guest tools, all cached."""
