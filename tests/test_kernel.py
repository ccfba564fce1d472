"""Kernel images: the ELF vmlinux is taken out of a bzImage by its boot header."""

from __future__ import annotations

import gzip
import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from lab import kernel as kernels
from lab.errors import BuildError

ELF = b"\x7fELF" + bytes(range(256)) * 64


def bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    """A bzImage-shaped file: setup sectors with the boot header, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 64, len(payload))
    return bytes(setup) + b"\x90" * 64 + payload + b"\x00" * 100


def with_size(compressed: bytes) -> bytes:
    return compressed + struct.pack("<I", len(ELF))  # what the kernel build appends


@pytest.mark.parametrize("compress", [
    lambda d: with_size(lzma.compress(d, format=lzma.FORMAT_XZ)),
    lambda d: gzip.compress(d),
    lambda d: with_size(subprocess.run(["zstd", "-c", "-q"], input=d, capture_output=True,
                                       check=True).stdout),
], ids=["xz", "gzip", "zstd"])
def test_vmlinux_comes_out_of_each_compression(compress, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(compress(ELF)))
    kernels.extract_vmlinux(image, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == ELF


def test_setup_sects_zero_means_four() -> None:
    payload = gzip.compress(ELF)
    data = bytearray(bzimage(payload, setup_sects=4))
    data[0x1F1] = 0
    assert kernels.bzimage_payload(bytes(data), "k") == payload


def test_not_a_bzimage_is_refused_by_name() -> None:
    with pytest.raises(BuildError, match="vmlinuz-x is not a bzImage"):
        kernels.bzimage_payload(b"\x00" * 4096, "vmlinuz-x")


def test_payload_outside_the_file_is_refused() -> None:
    data = bytearray(bzimage(b"abc"))
    struct.pack_into("<II", data, 0x248, 64, 1 << 20)
    with pytest.raises(BuildError, match="outside the file"):
        kernels.bzimage_payload(bytes(data), "k")


def test_unknown_compression_names_its_magic() -> None:
    with pytest.raises(BuildError, match=r"unsupported format.*4c5a4f"):
        kernels.decompress_kernel(b"LZO\x00\x00\x00rest", "k")


def test_payload_that_is_no_elf_is_refused() -> None:
    with pytest.raises(BuildError, match="not an ELF"):
        kernels.decompress_kernel(gzip.compress(b"plain text"), "k")
