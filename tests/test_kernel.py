"""Kernel images: the ELF vmlinux is taken out of a bzImage by its boot header."""

from __future__ import annotations

import gzip
import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from lab.build import debiankernel, kernelfetch, kernelspec, vmlinux
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
    vmlinux.extract_vmlinux(image, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == ELF


def test_setup_sects_zero_means_four() -> None:
    payload = gzip.compress(ELF)
    data = bytearray(bzimage(payload, setup_sects=4))
    data[0x1F1] = 0
    assert vmlinux.bzimage_payload(bytes(data), "k") == payload


def test_not_a_bzimage_is_refused_by_name() -> None:
    with pytest.raises(BuildError, match="vmlinuz-x is not a bzImage"):
        vmlinux.bzimage_payload(b"\x00" * 4096, "vmlinuz-x")


def test_payload_outside_the_file_is_refused() -> None:
    data = bytearray(bzimage(b"abc"))
    struct.pack_into("<II", data, 0x248, 64, 1 << 20)
    with pytest.raises(BuildError, match="outside the file"):
        vmlinux.bzimage_payload(bytes(data), "k")


def test_unknown_compression_names_its_magic() -> None:
    with pytest.raises(BuildError, match=r"unsupported format.*4c5a4f"):
        vmlinux.decompress_kernel(b"LZO\x00\x00\x00rest", "k")


def test_payload_that_is_no_elf_is_refused() -> None:
    with pytest.raises(BuildError, match="not an ELF"):
        vmlinux.decompress_kernel(gzip.compress(b"plain text"), "k")


def test_lz4_payload_is_decompressed() -> None:
    legacy = subprocess.run(["lz4", "-l", "-c", "-q"], input=ELF, capture_output=True,
                            check=True).stdout
    assert vmlinux.decompress_kernel(with_size(legacy), "k") == ELF


# ------------------------------------------------------------------ Debian kernel specs

APT = Path(__file__).parent / "data" / "apt"
IMAGES = (APT / "pkgnames-linux-image").read_text().split()
HEADERS = (APT / "pkgnames-linux-headers").read_text().split()


def resolve(spec: str) -> str:
    return debiankernel.resolve_debian(spec, IMAGES, HEADERS)


@pytest.mark.parametrize(("spec", "release"), [
    ("debian:6.1", "6.1.0-57-amd64"),
    ("debian:6.12", "6.12.117+deb12-amd64"),
    ("debian:6.1-cloud", "6.1.0-57-cloud-amd64"),
    ("debian:6.1-rt", "6.1.0-57-rt-amd64"),
    ("debian:6.12-cloud", "6.12.117+deb12-cloud-amd64"),
    ("debian:6.12-rt", "6.12.117+deb12-rt-amd64"),
    ("debian:6.12-rt-amd64", "6.12.117+deb12-rt-amd64"),
    ("debian:6.1.0-56-amd64", "6.1.0-56-amd64"),
    ("debian:6.1.0-57-cloud-amd64", "6.1.0-57-cloud-amd64"),
    ("debian:6.12.117+deb12-rt-amd64", "6.12.117+deb12-rt-amd64"),
])
def test_specs_resolve_to_what_the_apt_lists_have(spec: str, release: str) -> None:
    assert resolve(spec) == release


def test_debug_unsigned_and_meta_packages_are_no_kernels() -> None:
    names = {r.name for r in debiankernel.debian_releases(IMAGES, HEADERS)}
    assert names and all(n.endswith("amd64") for n in names)
    assert "6.12-amd64" not in names and "6.12-rt-amd64" not in names
    # 6.12.118 has only -dbg and -unsigned images; 6.1.0-48 has an image but no headers
    assert not any(n.startswith(("6.12.118", "6.1.0-48")) for n in names)
    flavours = {(r.series, r.flavour) for r in debiankernel.debian_releases(IMAGES, HEADERS)}
    assert flavours == {(s, f) for s in ("6.1", "6.12") for f in ("", "cloud", "rt")}


def test_unknown_release_names_the_nearest_of_its_flavour() -> None:
    with pytest.raises(BuildError) as info:
        resolve("debian:6.12.119+deb12-rt-amd64")
    assert str(info.value) == (
        "kernel 'debian:6.12.119+deb12-rt-amd64': no such Debian kernel (with headers) in the "
        "apt lists; closest: debian:6.12.117+deb12-rt-amd64, debian:6.12.115+deb12-rt-amd64, "
        "debian:6.12.113+deb12-rt-amd64")


def test_release_without_headers_says_so() -> None:
    with pytest.raises(BuildError, match=r"have linux-image-6\.1\.0-48-amd64 but no "
                       r"linux-headers-6\.1\.0-48-amd64.*closest: debian:6\.1\.0-47-amd64"):
        resolve("debian:6.1.0-48-amd64")


def test_release_without_flavour_names_every_flavour_of_it() -> None:
    with pytest.raises(BuildError) as info:
        resolve("debian:6.1.0-57")
    closest = str(info.value).split("closest: ")[1].split(", ")
    assert sorted(closest) == ["debian:6.1.0-57-amd64", "debian:6.1.0-57-cloud-amd64",
                               "debian:6.1.0-57-rt-amd64"]


def test_unknown_flavour_names_the_closest_series_specs() -> None:
    with pytest.raises(BuildError) as info:
        resolve("debian:6.12-rtt")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("kernel 'debian:6.12-rtt': no such Debian kernel series or "
                              "flavour in the apt lists; closest: debian:6.12-rt "
                              "(6.12.117+deb12-rt-amd64), ")


def test_empty_apt_lists_ask_for_an_update() -> None:
    with pytest.raises(BuildError, match="no Debian kernel with its headers; run 'apt-get update'"):
        debiankernel.resolve_debian("debian:6.1", ["linux-image-amd64"], [])


def test_resolve_release_asks_apt_for_images_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def fake_run(argv: list[str]) -> str:
        asked.append(argv)
        return "\n".join(IMAGES if argv[-1] == "linux-image-" else HEADERS) + "\n"

    monkeypatch.setattr(debiankernel, "run", fake_run)
    assert debiankernel.resolve_release("debian:6.12-rt") == "6.12.117+deb12-rt-amd64"
    assert asked == [["apt-cache", "pkgnames", "linux-image-"],
                     ["apt-cache", "pkgnames", "linux-headers-"]]


@pytest.mark.parametrize(("spec", "valid"), [
    ("debian:6.1", True), ("debian:6.12-rt", True), ("debian:6.12.117+deb12-rt-amd64", True),
    ("debian:7.0", True), ("local:/srv/linux", True), ("local:build", True),
    ("debian:", False), ("debian:latest", False), ("debian:6.1-", False),
    ("debian:6.1 rt", False), ("local:", False), ("local: ", False), ("local:/a\nb", False),
    ("/boot/vmlinuz", False), ("6.1", False),
])
def test_spec_form(spec: str, valid: bool) -> None:
    assert kernelspec.spec_is_valid(spec) is valid


def test_fetch_refuses_a_spec_out_of_form(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"kernel 'vmlinuz' is not a kernel spec"):
        kernelfetch.fetch("vmlinuz", tmp_path)
