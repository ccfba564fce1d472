"""All waits of the lab in one place, scaled by the accelerator."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

TCG_FACTOR = 1.0
KVM_FACTOR = 0.25


@dataclass(frozen=True)
class Timeouts:
    """Seconds for each bounded wait. Values are for TCG; KVM scales them down."""

    domain_start: float = 30.0
    ssh_banner: float = 120.0
    ssh_connect: float = 20.0
    command: float = 120.0
    shutdown: float = 20.0
    accel_probe: float = 20.0
    module_unload: float = 30.0

    def scaled(self, accel: str) -> Timeouts:
        factor = KVM_FACTOR if accel == "kvm" else TCG_FACTOR
        return replace(self, **{f.name: getattr(self, f.name) * factor for f in fields(self)})
