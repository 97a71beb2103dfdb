"""Linux network plumbing for the local cloud: one bridge, one namespace + veth pair per host.

Every name is derived from a `prefix`, so two clouds (two test runs, two engineers) on the
same machine never touch each other's interfaces. All of it needs root and `ip` (iproute2).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass

IFNAMSIZ = 15  # Linux interface names are at most 15 characters


class NetnsError(RuntimeError):
    """An `ip` command failed; the message carries the command and its stderr."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Names:
    """The names of everything one cloud creates, all derived from its prefix."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix.isalnum() or not self.prefix.islower() or len(self.prefix) > 8:
            raise ValueError(
                f"local cloud prefix {self.prefix!r} must be 1-8 lowercase letters/digits "
                "(interface names derived from it must fit Linux's 15 characters)"
            )

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def veth_outer(self, index: int) -> str:
        return self._ifname(f"{self.prefix}-v{index}")

    def veth_inner_tmp(self, index: int) -> str:
        # Created in the root namespace, moved into the host's and renamed to eth0 there.
        return self._ifname(f"{self.prefix}-p{index}")

    @staticmethod
    def _ifname(name: str) -> str:
        if len(name) > IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
        return name


def bridge_address(subnet: str) -> ipaddress.IPv4Interface:
    """The bridge's address: the first host address of the subnet (`.1` of a /24)."""
    net = ipaddress.IPv4Network(subnet)
    return ipaddress.IPv4Interface(f"{next(net.hosts())}/{net.prefixlen}")


def link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


def namespace_exists(ns: str) -> bool:
    return ns in list_namespaces()


def list_namespaces() -> list[str]:
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def create_bridge(name: str, address: ipaddress.IPv4Interface) -> None:
    if link_exists(name):
        raise NetnsError(
            f"bridge {name} already exists: another local cloud with this prefix is running, "
            f"or a previous run was killed before cleanup (`ip link del {name}` removes it)"
        )
    ip("link", "add", name, "type", "bridge")
    ip("addr", "add", str(address), "dev", name)
    ip("link", "set", name, "up")


def delete_link(name: str) -> None:
    if link_exists(name):
        ip("link", "del", name, check=False)


def create_namespace(
    ns: str, bridge: str, outer: str, inner_tmp: str, address: ipaddress.IPv4Interface
) -> None:
    """A namespace with lo up and eth0 (`address`) plugged into `bridge` by a veth pair."""
    if namespace_exists(ns):
        raise NetnsError(f"network namespace {ns} already exists (`ip netns del {ns}`)")
    ip("netns", "add", ns)
    ip("link", "add", outer, "type", "veth", "peer", "name", inner_tmp)
    ip("link", "set", outer, "master", bridge)
    ip("link", "set", outer, "up")
    ip("link", "set", inner_tmp, "netns", ns)
    ip("-n", ns, "link", "set", inner_tmp, "name", "eth0")
    ip("-n", ns, "addr", "add", str(address), "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "link", "set", "lo", "up")


def namespace_pids(ns: str) -> list[int]:
    proc = ip("netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): treat it as gone, its parent only has to reap it.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_pids(pids: list[int], grace_s: float = 5.0) -> list[int]:
    """SIGTERM, wait up to `grace_s`, then SIGKILL. Returns pids still alive (none, normally)."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def delete_namespace(ns: str, outer: str) -> list[int]:
    """Stop every process in `ns`, then delete it and its veth. Returns pids that would not die."""
    stubborn: list[int] = []
    if namespace_exists(ns):
        # Processes can fork while we kill: repeat until the namespace is empty.
        for _ in range(5):
            pids = namespace_pids(ns)
            if not pids:
                break
            stubborn = stop_pids(pids)
        ip("netns", "del", ns, check=False)
    delete_link(outer)  # normally gone with the namespace (its peer lived there)
    return stubborn
