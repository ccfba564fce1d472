"""Images: the host's apt sources, the debian builder's steps and its cache (no debootstrap)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab.build import apt
from lab.build.image import debian, kinds, nodefiles
from lab.build.image.guestimage import READY_MARK, Image
from lab.build.kernel import Kernel
from lab.errors import BuildError, HostError

DEB822 = """\
Types: deb
# a comment inside the paragraph
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: trixie
Components: main
"""


def kernel(tmp_path: Path, release: str = "6.1.0-9-amd64", version: str = "6.1.1-1") -> Kernel:
    return Kernel(spec="debian:6.1", release=release, package_version=version,
                  root=tmp_path / "kernels" / release)


# -- apt configuration --------------------------------------------------------------------
def test_one_line_sources_skip_comments_options_and_deb_src() -> None:
    text = ("# deb http://old.example/debian buster main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main "
            "contrib\n"
            "deb-src http://mirror.example/debian bookworm main\n"
            "deb http://mirror.example/debian bookworm-updates main  # trailing comment\n")
    found = apt.parse_one_line(text, Path("sources.list"))
    assert [(s.uri, s.suites, s.components) for s in found] == [
        ("http://mirror.example/debian", ("bookworm",), ("main", "contrib")),
        ("http://mirror.example/debian", ("bookworm-updates",), ("main",)),
    ]


def test_deb822_paragraphs_skip_disabled_ones() -> None:
    found = apt.parse_deb822(DEB822, Path("debian.sources"))
    assert [(s.uri, s.suites) for s in found] == [
        ("http://mirror.example/debian", ("bookworm", "bookworm-updates")),
        ("http://security.example/debian-security", ("bookworm-security",)),
    ]
    assert found[0].release_suites == ("bookworm",)


def test_deb822_continuation_lines_join_the_field() -> None:
    text = "Types: deb\nURIs: http://a.example/debian\n  http://b.example/debian\nSuites: sid\n" \
           "Components: main\n"
    assert [s.uri for s in apt.parse_deb822(text, Path("x.sources"))] == [
        "http://a.example/debian", "http://b.example/debian"]


def test_sources_reads_only_files_apt_reads(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://one.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "extra.list.disabled").write_text(
        "deb http://ignored.example/debian bookworm main\n")
    uris = [s.uri for s in apt.sources(tmp_path)]
    assert uris[0] == "http://one.example/debian"
    assert "http://ignored.example/debian" not in uris


def test_archive_is_the_release_suite_not_security(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        DEB822.replace("Suites: bookworm bookworm-updates", "Suites: bookworm-updates bookworm"))
    assert apt.debian_archive(tmp_path) == ("http://mirror.example/debian", "bookworm")


def test_no_archive_is_an_error_naming_the_directory(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb https://apt.example/x nodistro-main contrib\n")
    with pytest.raises(HostError, match=str(tmp_path)):
        apt.debian_archive(tmp_path)


# -- debian builder steps -------------------------------------------------------------------
def test_image_key_follows_what_shapes_the_image(tmp_path: Path) -> None:
    base = debian.image_key(kernel(tmp_path), "bookworm")
    assert debian.image_key(kernel(tmp_path), "bookworm") == base
    assert debian.image_key(kernel(tmp_path), "trixie") != base
    assert debian.image_key(kernel(tmp_path, release="6.1.0-10-amd64"), "bookworm") != base
    assert debian.image_key(kernel(tmp_path, version="6.1.1-2"), "bookworm") != base


def test_disk_size_leaves_headroom_and_is_mib_aligned() -> None:
    size = debian.disk_bytes(700 * 1024**2 + 3)
    assert size % 1024**2 == 0
    assert size >= 700 * 1024**2 * 5 // 4 + debian.HEADROOM


def test_mounts_below_a_tree_deepest_first() -> None:
    mounts = ("proc /proc proc rw 0 0\n"
              "proc /b/root/proc proc rw 0 0\n"
              "devpts /b/root/dev/pts devpts rw 0 0\n"
              "sysfs /b/rootfs/sys sysfs rw 0 0\n")
    assert debian.mounts_below(Path("/b/root"), mounts) == [Path("/b/root/dev/pts"),
                                                            Path("/b/root/proc")]


def fake_bootstrapped(root: Path) -> Path:
    """The parts of a debootstrap tree that configure() touches."""
    system = root / "etc" / "systemd" / "system"
    for wants, unit in (("timers.target.wants", "apt-daily.timer"),
                        ("getty.target.wants", "getty@tty1.service"),
                        ("multi-user.target.wants", "ssh.service")):
        (system / wants).mkdir(parents=True, exist_ok=True)
        (system / wants / unit).symlink_to(f"/lib/systemd/system/{unit}")
    (root / "etc" / "ssh" / "sshd_config.d").mkdir(parents=True)
    (root / "etc" / "machine-id").write_text("e94a7f59492444c598227abb49200914\n")
    archives = root / "var" / "cache" / "apt" / "archives"
    archives.mkdir(parents=True)
    (archives / "bash_5.2_amd64.deb").write_bytes(b"deb")
    return root


def test_configure_makes_a_lab_guest(tmp_path: Path) -> None:
    root = fake_bootstrapped(tmp_path / "root")
    debian.configure(root)
    system = root / "etc" / "systemd" / "system"
    assert (root / "etc" / "machine-id").read_text() == ""  # each VM gets its own at boot
    assert (root / "etc" / "fstab").read_text().startswith("/dev/vda / ext4")
    ready = (system / "hplab-ready.service").read_text()
    assert "After=ssh.service" in ready and READY_MARK in ready
    assert (system / "multi-user.target.wants" / "hplab-ready.service").is_symlink()
    assert "DefaultDependencies=no" in (system / "ssh.service.d" / "hplab.conf").read_text()
    assert (system / "multi-user.target.wants" / "ssh.service").is_symlink()
    assert not (system / "timers.target.wants" / "apt-daily.timer").exists()
    assert not (system / "getty.target.wants" / "getty@tty1.service").is_symlink()
    for unit in debian.MASKED_UNITS:
        assert str((system / unit).readlink()) == "/dev/null"
    assert str((root / "etc/systemd/network/99-default.link").readlink()) == "/dev/null"
    assert "HostKey /etc/ssh/ssh_host_ed25519_key" in \
        (root / "etc/ssh/sshd_config.d/hplab.conf").read_text()
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))


def test_host_key_is_fresh_and_the_only_one(tmp_path: Path) -> None:
    ssh = tmp_path / "etc" / "ssh"
    ssh.mkdir(parents=True)
    for old in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key"):
        (ssh / old).write_text("old")
    line = debian.generate_host_key(tmp_path)
    kind, blob = line.split()
    assert kind == "ssh-ed25519" and len(blob) > 60
    assert sorted(p.name for p in ssh.iterdir()) == ["ssh_host_ed25519_key",
                                                     "ssh_host_ed25519_key.pub"]
    assert blob in (ssh / "ssh_host_ed25519_key.pub").read_text()


def test_kernel_modules_go_into_the_merged_usr_tree(tmp_path: Path) -> None:
    k = kernel(tmp_path)
    (k.modules_dir / "kernel" / "drivers").mkdir(parents=True)
    (k.modules_dir / "kernel" / "drivers" / "virtio_net.ko").write_bytes(b"\x7fELF")
    (k.modules_dir / "modules.dep").write_text("kernel/drivers/virtio_net.ko:\n")
    (k.modules_dir / "build").symlink_to("/nonexistent/headers")
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    debian.install_kernel_modules(k, root)
    dest = root / "usr" / "lib" / "modules" / k.release
    assert (dest / "kernel" / "drivers" / "virtio_net.ko").read_bytes() == b"\x7fELF"
    assert (dest / "modules.dep").exists()
    assert not (dest / "build").exists() and not (dest / "build").is_symlink()


def test_stage1_init_hands_the_per_vm_files_to_the_root(tmp_path: Path) -> None:
    """The files node_initrd writes are the ones the debian stage 1 copies over."""
    image = Image(kind="debian", key="k", path=tmp_path / "base.cpio.gz",
                         host_key="ssh-ed25519 AAAA")
    image.path.write_bytes(b"")
    out = nodefiles.node_initrd(image, tmp_path / "node.cpio.gz", hostname="cn1",
                             authorized_key="ssh-ed25519 KEY lab")
    listing = subprocess.run(["sh", "-c", f"zcat {out} | cpio -t --quiet"],
                             capture_output=True, text=True, check=True).stdout.split()
    for path in ("etc/hostname", "root/.ssh/authorized_keys"):
        assert path in listing
        assert f"/{path} /newroot/{path}" in debian.INIT
    assert "switch_root /newroot /sbin/init" in debian.INIT
    assert "ip addr add 10.0.2.15/24 dev eth0" in debian.INIT
    assert "virtio_net" in debian.ROOT_MODULES


# -- the cache ------------------------------------------------------------------------------
def fake_build_into(calls: list[str]):  # type: ignore[no-untyped-def]
    def build_into(k: Kernel, suite: str, mirror: str, out_dir: Path) -> str:
        calls.append(f"{suite} {mirror}")
        (out_dir / "root.qcow2").write_bytes(b"QFI")
        (out_dir / "initramfs.cpio.gz").write_bytes(b"")
        return "ssh-ed25519 AAAAFAKE"
    return build_into


def test_second_build_takes_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "apt").mkdir()
    (tmp_path / "apt" / "sources.list").write_text("deb http://m.example/debian bookworm main\n")
    calls: list[str] = []
    monkeypatch.setattr(debian, "_build_into", fake_build_into(calls))
    first = debian.build(kernel(tmp_path), tmp_path / "cache", tmp_path / "apt")
    second = debian.build(kernel(tmp_path), tmp_path / "cache", tmp_path / "apt")
    assert calls == ["bookworm http://m.example/debian"]
    assert first == second
    assert first.disk == first.path.parent / "root.qcow2"
    assert first.host_key == "ssh-ed25519 AAAAFAKE"
    meta = json.loads((first.path.parent / "image.json").read_text())
    assert meta["suite"] == "bookworm" and meta["packages"] == list(debian.PACKAGES)


def test_a_failed_build_leaves_no_cache_entry(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "apt").mkdir()
    (tmp_path / "apt" / "sources.list").write_text("deb http://m.example/debian bookworm main\n")

    def broken(*_args: object) -> str:
        raise BuildError("debootstrap failed")

    monkeypatch.setattr(debian, "_build_into", broken)
    with pytest.raises(BuildError):
        debian.build(kernel(tmp_path), tmp_path / "cache", tmp_path / "apt")
    calls: list[str] = []
    monkeypatch.setattr(debian, "_build_into", fake_build_into(calls))
    debian.build(kernel(tmp_path), tmp_path / "cache", tmp_path / "apt")
    assert len(calls) == 1


def test_unknown_kind_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"'cloud'.*minimal, debian"):
        kinds.build("cloud", kernel(tmp_path), tmp_path)


def test_overlay_per_vm_is_backed_by_the_base(tmp_path: Path) -> None:
    base = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    image = Image(kind="debian", key="k", path=tmp_path / "i", host_key="x", disk=base)
    overlay = nodefiles.node_disk(image, tmp_path / "disk.qcow2")
    assert overlay == tmp_path / "disk.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"


def test_minimal_images_have_no_disk(tmp_path: Path) -> None:
    image = Image(kind="minimal", key="k", path=tmp_path / "i", host_key="x")
    assert nodefiles.node_disk(image, tmp_path / "disk.qcow2") is None
    assert not (tmp_path / "disk.qcow2").exists()
