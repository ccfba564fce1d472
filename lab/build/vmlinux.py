"""The ELF vmlinux inside a bzImage, found by its boot protocol header and decompressed
(gzip, xz, zstd or lz4): what a guest boots through QEMU's PVH entry."""

from __future__ import annotations

import lzma
import struct
import subprocess
import zlib
from pathlib import Path

from lab.errors import BuildError


def bzimage_payload(data: bytes, name: str) -> bytes:
    """The compressed kernel inside a bzImage, located by its boot protocol header."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise BuildError(f"{name} is not a bzImage (no 'HdrS' boot header)")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(data):
        raise BuildError(f"{name}: payload offset {offset} length {length} is outside the file")
    return data[start:start + length]


def _decompress_with(tool: str, payload: bytes, name: str) -> bytes:
    proc = subprocess.run([tool, "-dcq"], input=payload[:-4], capture_output=True,
                          check=False)  # the kernel appends the size after the frame
    if proc.returncode != 0:
        raise BuildError(f"{name}: {tool} could not decompress the kernel: "
                         f"{proc.stderr.decode().strip()}")
    return proc.stdout


def decompress_kernel(payload: bytes, name: str) -> bytes:
    """gzip, xz, zstd or lz4 payload -> the ELF vmlinux."""
    if payload.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        elf = _decompress_with("zstd", payload, name)
    elif payload.startswith(b"\x02\x21\x4c\x18"):  # lz4 legacy frame (Debian's cloud 6.1)
        elf = _decompress_with("lz4", payload, name)
    elif payload.startswith(b"\x1f\x8b"):
        elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    else:
        raise BuildError(f"{name}: kernel compressed with an unsupported format "
                         f"(magic {payload[:6].hex()}; known: gzip, xz, zstd, lz4)")
    if not elf.startswith(b"\x7fELF"):
        raise BuildError(f"{name}: the decompressed kernel is not an ELF file")
    return elf


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    data = bzimage.read_bytes()
    elf = decompress_kernel(bzimage_payload(data, str(bzimage)), str(bzimage))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(elf)
    tmp.chmod(0o644)
    tmp.replace(out)

