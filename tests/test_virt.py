from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import virt
from lab.engine import kernel_cmdline
from lab.topology import parse

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def spec(**changes: object) -> virt.DomainSpec:
    base = dict(name="hplab-abcd1234-cn1", run_id="abcd1234", node="cn1", memory_mib=3072,
                vcpus=1, accel="tcg", kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd"),
                cmdline="console=ttyS0 panic=-1", console=Path("/r/cn1/console.log"),
                ssh_port=40022)
    base.update(changes)
    return virt.DomainSpec(**base)  # type: ignore[arg-type]


def test_tcg_domain_xml() -> None:
    root = ET.fromstring(virt.domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "hplab-abcd1234-cn1"
    assert root.find("cpu").attrib == {"mode": "maximum", "check": "none"}
    assert root.findtext("os/kernel") == "/k/vmlinuz"
    assert root.findtext("os/cmdline") == "console=ttyS0 panic=-1"
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert root.findtext(event) == "destroy"
    assert root.find("devices/graphics") is None
    assert root.find("devices/serial/source").get("path") == "/r/cn1/console.log"
    args = [a.get("value") for a in root.iter(f"{QEMU_NS}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
    assert root.find("memoryBacking") is None


def test_kvm_and_hugepage_backing() -> None:
    root = ET.fromstring(virt.domain_xml(spec(accel="kvm", hugepage_backing=True)))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"
    args = [a.get("value") for a in root.iter(f"{QEMU_NS}arg")]
    backend = args[args.index("-object") + 1]
    assert backend == ("memory-backend-file,id=hplab.ram,size=3221225472,"
                       "mem-path=/dev/hugepages1G,share=off,prealloc=on")
    assert args[args.index("-machine") + 1] == "memory-backend=hplab.ram"


def test_unbacked_domain_leaves_ram_to_libvirt() -> None:
    args = [a.get("value") for a in ET.fromstring(virt.domain_xml(spec())).iter(f"{QEMU_NS}arg")]
    assert "-object" not in args and "-machine" not in args


def test_disk_is_a_qcow2_virtio_disk_on_a_fixed_slot() -> None:
    root = ET.fromstring(virt.domain_xml(spec(disk=Path("/r/cn1/disk.qcow2"))))
    disk = root.find("devices/disk")
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("source").get("file") == "/r/cn1/disk.qcow2"
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert disk.find("address").get("slot") == "0x05"
    assert ET.fromstring(virt.domain_xml(spec())).find("devices/disk") is None


def test_metadata_is_quoted() -> None:
    root = ET.fromstring(virt.domain_xml(spec(console=Path("/r/a'b&c/console.log"))))
    assert root.find("devices/serial/source").get("path") == "/r/a'b&c/console.log"


def test_domain_names_carry_run_and_node() -> None:
    assert virt.domain_name("abcd1234", "cn1") == "hplab-abcd1234-cn1"


def test_free_port_is_loopback_bindable() -> None:
    port = virt.free_port()
    assert 1024 < port < 65536


def test_transient_errors_are_recognised() -> None:
    assert virt.is_transient_error(Exception("Could not set up host forwarding rule 'x'"))
    assert not virt.is_transient_error(Exception("unsupported configuration"))


@pytest.mark.parametrize(("text", "expected"), [
    ("nodes: [{name: a, hugepages: {size: 1G, count: 1}}]",
     "console=ttyS0 panic=-1 quiet rdinit=/init cryptomgr.notests "
     "default_hugepagesz=1G hugepagesz=1G hugepages=1"),
    ("nodes: [{name: a, memory: 2G, hugepages: {size: 2M, count: 64}, cmdline: 'mitigations=off'}]",
     "console=ttyS0 panic=-1 quiet rdinit=/init cryptomgr.notests "
     "default_hugepagesz=2M hugepagesz=2M hugepages=64 mitigations=off"),
    ("nodes: [{name: a}]", "console=ttyS0 panic=-1 quiet rdinit=/init cryptomgr.notests"),
])
def test_kernel_cmdline(text: str, expected: str) -> None:
    assert kernel_cmdline(parse(text, Path("t.yaml")).nodes[0]) == expected


def test_console_tail_of_missing_file(tmp_path: Path) -> None:
    assert "no console file" in virt.console_tail(tmp_path / "nothing")


def test_console_tail_keeps_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = virt.console_tail(log, 3)
    assert tail.splitlines() == ["line 97", "line 98", "line 99"]


def test_resolve_accel_honours_explicit_choice() -> None:
    def must_not_probe() -> bool:
        raise AssertionError("probed")

    assert virt.resolve_accel("tcg", must_not_probe) == "tcg"
    assert virt.resolve_accel("auto", lambda: False) == "tcg"
    assert virt.resolve_accel("auto", lambda: True) == "kvm"
