"""Kernel configs: a kernel lacking what the lab needs is refused, naming the options."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.build import kconfig
from lab.errors import BuildError

DATA = Path(__file__).parent / "data" / "kconfig"
RT = DATA / "config-6.12.117+deb12-rt-amd64.excerpt"
CLOUD = DATA / "config-6.1.0-57-cloud-amd64.excerpt"


def complete() -> str:
    return "".join(f"{need.option}=y\n" for need in kconfig.NEEDS)


@pytest.mark.parametrize("config", [RT, CLOUD], ids=["6.12-rt", "6.1-cloud"])
def test_debian_flavours_have_what_the_lab_needs(config: Path) -> None:
    kconfig.check(config, config.name)


def test_rt_has_no_transparent_huge_pages_and_needs_none() -> None:
    options = kconfig.parse(RT.read_text())
    assert options["CONFIG_PREEMPT_RT"] == "y"
    assert "CONFIG_TRANSPARENT_HUGEPAGE" not in options
    assert kconfig.missing(options) == []


def test_parse_reads_set_options_only() -> None:
    text = "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_D=m\n"
    assert kconfig.parse(text) == {"CONFIG_A": "y", "CONFIG_C": '"x y"', "CONFIG_D": "m"}


def test_virtio_may_be_modules_but_init_needs_may_not() -> None:
    text = complete().replace("CONFIG_VIRTIO_NET=y", "CONFIG_VIRTIO_NET=m")
    assert kconfig.missing(kconfig.parse(text)) == []
    text = complete().replace("CONFIG_BINFMT_SCRIPT=y", "CONFIG_BINFMT_SCRIPT=m")
    assert kconfig.missing(kconfig.parse(text)) == [
        "CONFIG_BINFMT_SCRIPT=m (the /init script; needs =y)"]


def test_every_missing_option_is_named_on_one_line(tmp_path: Path) -> None:
    text = (complete().replace("CONFIG_HUGETLBFS=y", "# CONFIG_HUGETLBFS is not set")
            .replace("CONFIG_HUGETLB_PAGE=y\n", "").replace("CONFIG_MODULE_UNLOAD=y", "")
            .replace("CONFIG_VIRTIO_BLK=y", "CONFIG_VIRTIO_BLK=n"))
    config = tmp_path / "config-6.13.0-hplab"
    config.write_text(text)
    with pytest.raises(BuildError) as info:
        kconfig.check(config, "6.13.0-hplab")
    assert str(info.value) == (
        f"kernel 6.13.0-hplab: config {config} lacks what the lab needs: CONFIG_VIRTIO_BLK "
        "(virtio root disk), CONFIG_MODULE_UNLOAD (module unload), CONFIG_HUGETLBFS "
        "(hugetlbfs), CONFIG_HUGETLB_PAGE (huge pages)")


def test_unreadable_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"kernel k: cannot read its config .*/config-k: No such"):
        kconfig.check(tmp_path / "config-k", "k")
