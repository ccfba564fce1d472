"""The calls the lab makes to libvirt: connect (with keepalive), create, destroy, look up and
list domains, tell transient errors apart, and find a running domain's QEMU pid."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

from lab.errors import HostError, LabError
from lab.vm.domain import DOMAIN_PREFIX, DomainSpec, domain_xml

TRANSIENT_ERRORS = ("Could not set up host forwarding rule", "cannot acquire state change lock",
                    "Address already in use")


# A daemon that answers none of 3 keepalive probes sent 5 s apart is gone: the connection
# closes and every call blocked on it returns an error instead of waiting forever.
KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 3


@functools.cache
def _event_loop() -> threading.Thread:
    """libvirt's default event loop, which keepalive needs; one per process, as libvirt
    allows, registered before the first connection opens."""
    import libvirt

    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    thread = threading.Thread(target=loop, name="libvirt-events", daemon=True)
    thread.start()
    return thread


def connect(uri: str, wait_s: float = 0.0):  # type: ignore[no-untyped-def]
    """A libvirt connection that notices a daemon gone silent (keepalive), with an error
    that says how to start libvirt.

    `wait_s` rides out a daemon that is restarting: the open is retried until then.
    """
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    _event_loop()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = libvirt.open(uri)
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
            return conn
        except libvirt.libvirtError as exc:
            if time.monotonic() >= deadline:
                waited = f" (retried for {wait_s:.0f}s)" if wait_s else ""
                raise HostError(f"cannot connect to libvirt at {uri}{waited}: {exc}; "
                                "run 'hplab host prepare' (as root) to start it") from None
            time.sleep(0.5)


def alive(conn) -> bool:  # type: ignore[no-untyped-def]
    """Whether a libvirt connection still reaches its daemon (False after a restart)."""
    import libvirt

    try:
        return bool(conn.isAlive()) and conn.getLibVersion() > 0
    except libvirt.libvirtError:
        return False


def _lookup(conn, name: str):  # type: ignore[no-untyped-def]
    """The domain `name`, or None when libvirt says there is none; other errors raise."""
    import libvirt

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise LabError(f"libvirt: looking up domain {name}: {exc}") from None


def create(conn, spec: DomainSpec):  # type: ignore[no-untyped-def]
    import libvirt

    try:
        return conn.createXML(domain_xml(spec), 0)
    except libvirt.libvirtError as exc:
        raise LabError(f"libvirt refused domain {spec.name}: {exc}") from None


def is_transient_error(exc: Exception) -> bool:
    return any(marker in str(exc) for marker in TRANSIENT_ERRORS)


def destroy(conn, name: str) -> bool:  # type: ignore[no-untyped-def]
    """Destroy a domain by name; True if it existed."""
    import libvirt

    dom = _lookup(conn, name)
    if dom is None:
        return False
    try:
        persistent = dom.isPersistent()
        dom.destroy()
        if persistent:
            dom.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return True  # it went away on its own (a transient domain that crashed)
        if is_active(conn, name):
            raise LabError(f"libvirt: destroying domain {name}: {exc}") from None
    return True


def lab_domains(conn) -> list[str]:  # type: ignore[no-untyped-def]
    names = [dom.name() for dom in conn.listAllDomains()]
    return sorted(n for n in names if n.startswith(DOMAIN_PREFIX))


def is_active(conn, name: str) -> bool:  # type: ignore[no-untyped-def]
    import libvirt

    dom = _lookup(conn, name)
    if dom is None:
        return False
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise LabError(f"libvirt: domain {name}: {exc}") from None


def qemu_pid(domain: str) -> int:
    """The QEMU process of a running qemu:///system domain."""
    pidfile = Path("/run/libvirt/qemu") / f"{domain}.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise LabError(f"no QEMU pid for domain {domain} in {pidfile}: {exc}") from None
