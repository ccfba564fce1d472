"""Every node boots the requested kernel with the requested huge-page pool."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from lab.build import guesttools
from lab.engine import Lab, NodeRuntime
from lab.errors import GuestError
from lab.guest import hugetlbfs
from lab.guest.memory import parse_meminfo
from lab.guest.ssh import Guest
from lab.host import hugepages, inspect
from lab.vm import domain, libvirt_calls

pytestmark = pytest.mark.lab


def test_every_node_answers(lab: Lab) -> None:
    for name in lab.nodes:
        assert lab.guest(name).check("cat /etc/hostname").strip() == name


def test_running_kernel_is_the_requested_one(guest: Guest, node: NodeRuntime) -> None:
    assert guest.check("uname -r").strip() == node.kernel.release


def test_pool_actually_reserved_matches_topology(host: Any, node: NodeRuntime) -> None:
    pages = node.node.hugepages
    if pages is None:
        pytest.skip(f"node {node.node.name!r} asks for no huge pages")
    sysfs = f"/sys/kernel/mm/hugepages/hugepages-{pages.size_kib}kB/nr_hugepages"
    assert int(host.file(sysfs).content_string) == pages.count
    meminfo = parse_meminfo(host.file("/proc/meminfo").content_string)
    assert meminfo["HugePages_Total"] == pages.count
    assert meminfo["Hugepagesize"] == pages.size_kib


@pytest.mark.hugepages(size="1G", count=1)
def test_cpu_offers_gigantic_pages(host: Any) -> None:
    flags = host.file("/proc/cpuinfo").content_string
    assert " pdpe1gb" in flags


@pytest.mark.hugepages(size="1G", count=1)
def test_one_gib_file_maps_gib_aligned(guest: Guest, lab: Lab) -> None:
    tool = guesttools.install(guest, "hugemap", lab.cache)
    guest.check(hugetlbfs.mount_command("/mnt/huge1g", "1G"))
    try:
        before = int(guest.read("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages"))
        mapped = json.loads(guest.check(f"{tool} /mnt/huge1g/probe {1 << 30}"))
        assert mapped["length"] == 1 << 30
        assert mapped["address"] % (1 << 30) == 0
        assert mapped["mismatches"] == 0
        guest.check("rm -f /mnt/huge1g/probe")
        after = int(guest.read("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages"))
        assert after == before
    finally:
        guest.run(f"rm -f /mnt/huge1g/probe; {hugetlbfs.unmount_command('/mnt/huge1g')}")


def _assert_ram_on_host_gigantic_pages(node: NodeRuntime) -> None:
    ram = [m for m in inspect.guest_ram_mappings(node.domain, node.node.memory_mib)
           if m.path.startswith(f"{hugepages.HUGETLBFS_1G}/")]
    assert len(ram) == 1, f"no single guest-RAM mapping on {hugepages.HUGETLBFS_1G}: {ram}"
    assert ram[0].kernel_page_kib == hugepages.PAGE_1G_KIB
    assert ram[0].hugetlb_kib == node.node.memory_mib * 1024  # preallocated: all mapped
    conn = libvirt_calls.connect(node.node.uri)
    try:
        assert inspect.ram_backend(conn, node.domain) == domain.RAM_BACKEND
    finally:
        conn.close()


def test_host_backing_sits_on_gigantic_pages(node: NodeRuntime) -> None:
    """From the host: QEMU's guest RAM is a hugetlbfs mapping of 1 GiB kernel pages."""
    if node.node.backing != "hugepages-1G":
        pytest.skip(f"node {node.node.name!r} is not backed by host huge pages")
    _assert_ram_on_host_gigantic_pages(node)


def test_reboot_is_a_new_boot_on_a_new_disk_with_the_whole_pool(
        guest: Guest, node: NodeRuntime, lab: Lab, reboot: Callable[[str], Guest]) -> None:
    boot_id = "cat /proc/sys/kernel/random/boot_id"
    before = guest.check(boot_id)
    on_disk = node.disk is not None  # the minimal image's root lives in RAM
    if on_disk:
        guest.check("echo stale > /root/left-behind; sync")
        assert guest.check("stat -f -c %T /root").strip() != "tmpfs", "the root is not the disk"
    pages = node.node.hugepages
    pool = (f"cat /sys/kernel/mm/hugepages/hugepages-{pages.size_kib}kB/free_hugepages"
            if pages else "echo 0")
    if pages:  # a huge page left held in a hugetlbfs file
        tool = guesttools.install(guest, "hugemap", lab.cache)
        guest.check(f"{hugetlbfs.mount_command('/mnt/hp', pages.size)} && "
                    f"{tool} /mnt/hp/held {pages.size_kib * 1024}")
        assert int(guest.check(pool)) == pages.count - 1

    fresh = reboot(node.node.name)

    assert fresh.check(boot_id) != before
    assert fresh.check("uname -r").strip() == node.kernel.release
    if on_disk:
        assert not fresh.run("test -e /root/left-behind").ok, "the old boot's disk came back"
    assert int(fresh.check(pool)) == (pages.count if pages else 0)
    with pytest.raises(GuestError, match="rebooted into boot"):
        guest.check("true")
    if node.node.backing == "hugepages-1G":
        _assert_ram_on_host_gigantic_pages(node)
