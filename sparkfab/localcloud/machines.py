"""Machines for the local cloud: each instance boots the Debian image under systemd-nspawn.

The watcher speaks to moto on one side and to a `MachineProvider` on the other: create (a
disk and a NIC), boot, console output, power state, destroy. That is the shape a cloud's
hypervisor API has (and SkyPilot's / Ray's node providers): another implementation (qemu,
a remote host) fits behind it without the watcher changing.

`NspawnProvider` (checked on this machine, see ARCHITECTURE.md):
- disk: an overlay per node, the image read-only below, `nodes/<name>/upper` above; it is
  mounted inside a private mount namespace that lives exactly as long as the machine, so
  no mount outlives it;
- NIC: a network namespace on the cloud's bridge at the instance's private IP, default
  route via the bridge (NAT to the registry, nat.py);
- metadata: cloud-init's NoCloud seed in the upper layer (instance id, hostname, the key
  pair's public key, the user data from moto);
- boot: `systemd-nspawn -b` started from the node's own cgroup directory (with
  `--keep-unit` nspawn makes its cgroups where it starts: two nodes in one would collide),
  pinned to one core; its console (`--console=read-only`) is the node's console log;
- power: nspawn exits when the node powers off (0) or reboots (133); SIGTERM to nspawn is
  a clean ACPI-style shutdown (~3 s). SIGKILL is never sent: it leaves the node's systemd
  running without its supervisor.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sparkfab.localcloud import netns, resources

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
# A node halts in ~3 s here; a loaded one (Spark, a job) takes longer to stop its units.
HALT_TIMEOUT_S = 90.0
REBOOT_EXIT = 133  # systemd-nspawn's exit code when the container rebooted

RUNNING = "running"
OFF = "off"
REBOOTING = "rebooting"


@dataclass(frozen=True)
class MachineSpec:
    """What a launched instance brings: its identity, address, key and user data."""

    name: str  # the harness's name for it: namespace and directories derive from it
    instance_id: str
    ip: str
    public_keys: tuple[str, ...]
    user_data: bytes = b""
    core: int | None = None  # the host core it is pinned to; None: not pinned
    cpus: str | None = None  # its cores as taskset takes them ("0,1"); None: `core` alone
    memory_mb: int | None = None  # what its /proc/meminfo says (resources.py); None: host's


@dataclass
class Machine:
    spec: MachineSpec
    namespace: str
    node_dir: Path
    console_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    boots: int = 0
    memory_reported: bool = False  # its /proc/meminfo says spec.memory_mb (this boot)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class MachineProvider(Protocol):
    def create(self, spec: MachineSpec) -> Machine: ...
    def boot(self, machine: Machine) -> None: ...
    def console_output(self, machine: Machine) -> str: ...
    def power_state(self, machine: Machine) -> str: ...
    def settle(self, machine: Machine) -> bool: ...
    def destroy(self, machine: Machine, keep_disk: bool = False) -> list[int]: ...


def hostname_for(ip: str) -> str:
    """EC2's default hostname for a private IP: ip-10-77-16-4."""
    return "ip-" + ip.replace(".", "-")


def meta_data(spec: MachineSpec) -> str:
    """NoCloud meta-data: what EC2's metadata service tells cloud-init."""
    import yaml

    return yaml.safe_dump({
        "instance-id": spec.instance_id,
        "local-hostname": hostname_for(spec.ip),
        "public-keys": list(spec.public_keys),
    }, sort_keys=False)


class NspawnProvider:
    """Machines as systemd-nspawn containers booting `image`, one network namespace each."""

    def __init__(self, image: Path, workdir: Path, names: netns.Names, bridge_ip: str,
                 prefixlen: int, console_dir: Path, subnet_start: int) -> None:
        self.image = image
        self.workdir = workdir
        self.names = names
        self.bridge_ip = bridge_ip
        self.prefixlen = prefixlen
        self.console_dir = console_dir
        self.subnet_start = subnet_start  # int of the subnet's network address

    # ---- create: disk, NIC, metadata -------------------------------------------------

    def create(self, spec: MachineSpec) -> Machine:
        node = self.workdir / "nodes" / spec.name
        ns = self.names.namespace(spec.name)
        self.console_dir.mkdir(parents=True, exist_ok=True)
        machine = Machine(spec, ns, node, self.console_dir / f"{spec.instance_id}.log")
        fresh = not (node / "upper").is_dir()
        for part in ("upper", "work", "merged"):
            (node / part).mkdir(parents=True, exist_ok=True)
        if spec.memory_mb is not None:  # every start: a stopped instance may change type
            info = node / "upper" / resources.MEMINFO_PATH
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text(resources.meminfo(spec.memory_mb))
        if fresh:
            self._seed(node / "upper", spec)
            # A new machine's console starts empty: keys printed by an earlier machine of
            # the same name (a re-run) must never be read as this one's.
            machine.console_path.write_bytes(b"")
        offset = self._offset(spec.ip)
        netns.create_namespace(
            ns, self.names.bridge, self.names.veth_outer(offset),
            self.names.veth_inner_tmp(offset),
            ipaddress.IPv4Interface(f"{spec.ip}/{self.prefixlen}"))
        netns.ip("-n", ns, "route", "add", "default", "via", self.bridge_ip)
        # A machine re-made at an address has a new MAC: drop the old neighbour entry.
        subprocess.run(["ip", "neigh", "flush", "to", spec.ip], capture_output=True,
                       check=False)
        return machine

    def _offset(self, ip: str) -> int:
        return int(ipaddress.IPv4Address(ip)) - self.subnet_start

    @staticmethod
    def _seed(upper: Path, spec: MachineSpec) -> None:
        seed = upper / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True)
        (seed / "meta-data").write_text(meta_data(spec))
        (seed / "user-data").write_bytes(spec.user_data or b"#cloud-config\n{}\n")
        os.chmod(seed / "user-data", 0o600)
        # The VPC's resolver, as DHCP gives it on EC2: the host's own (reached through NAT).
        etc = upper / "etc"
        etc.mkdir(exist_ok=True)
        resolv = Path("/etc/resolv.conf")
        (etc / "resolv.conf").write_text(resolv.read_text() if resolv.exists() else "")

    # ---- boot ------------------------------------------------------------------------

    def cgroup(self, machine: Machine) -> Path:
        return CGROUP_ROOT / machine.namespace

    def boot(self, machine: Machine) -> None:
        q = shlex.quote
        node = machine.node_dir
        cgroup = self.cgroup(machine)
        cgroup.mkdir(exist_ok=True)
        opts = f"lowerdir={self.image},upperdir={node / 'upper'},workdir={node / 'work'}"
        nspawn = [
            "systemd-nspawn", "--boot", f"--directory={node / 'merged'}",
            f"--machine={machine.namespace}", "--register=no", "--keep-unit",
            f"--network-namespace-path=/run/netns/{machine.namespace}",
            "--console=read-only", "--link-journal=no", "--resolv-conf=off",
            "--timezone=off",
            # The security groups are an nft table in this namespace (firewall.py): as on
            # EC2, nothing inside the instance may change them. The host sets the network up.
            "--drop-capability=CAP_NET_ADMIN",
        ]
        inner = (f"mount -t overlay overlay -o {q(opts)} {q(str(node / 'merged'))} && "
                 f"exec {shlex.join(nspawn)}")
        cpus = machine.spec.cpus or (None if machine.spec.core is None
                                     else str(machine.spec.core))
        pin = f"taskset --cpu-list {q(cpus)} " if cpus is not None else ""
        outer = (f"echo $$ > {q(str(cgroup / 'cgroup.procs'))} && "
                 f"exec {pin}unshare --mount --propagation private sh -c {q(inner)}")
        with machine.console_path.open("ab") as console:
            machine.process = subprocess.Popen(
                ["sh", "-c", outer], stdin=subprocess.DEVNULL, stdout=console,
                stderr=subprocess.STDOUT, start_new_session=True)
        machine.boots += 1
        machine.memory_reported = False

    def settle(self, machine: Machine) -> bool:
        """What a booting machine needs once its systemd runs: its /proc/meminfo saying its
        type's memory (resources.py). True once nothing is left to do; call it again
        (each poll) until then."""
        if machine.spec.memory_mb is None or machine.memory_reported:
            return True
        pid = resources.init_pid(cgroup_pids(self.cgroup(machine)))
        if pid is not None and resources.report_memory(pid):
            machine.memory_reported = True
        return machine.memory_reported

    # ---- observe ---------------------------------------------------------------------

    def console_output(self, machine: Machine) -> str:
        try:
            return machine.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def power_state(self, machine: Machine) -> str:
        if machine.process is None:
            return OFF
        code = machine.process.poll()
        if code is None:
            return RUNNING
        return REBOOTING if code == REBOOT_EXIT else OFF

    # ---- destroy ---------------------------------------------------------------------

    def halt(self, machine: Machine, timeout_s: float = HALT_TIMEOUT_S) -> list[int]:
        """Shut the machine down cleanly (SIGTERM to nspawn); pids still in its cgroup."""
        proc = machine.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        return remove_cgroup(self.cgroup(machine))

    def destroy(self, machine: Machine, keep_disk: bool = False) -> list[int]:
        """Halt it, remove its cgroup and network namespace (and its disk unless kept).
        Returns the pids that would not stop (none, normally)."""
        stubborn = self.halt(machine)
        if not stubborn:
            offset = self._offset(machine.spec.ip)
            stubborn += netns.delete_namespace(machine.namespace,
                                               self.names.veth_outer(offset))
        if not keep_disk:
            import shutil

            shutil.rmtree(machine.node_dir, ignore_errors=True)
        return stubborn


def cgroup_pids(cgroup: Path) -> list[int]:
    pids: list[int] = []
    if not cgroup.is_dir():
        return pids
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def remove_cgroup(cgroup: Path, wait_s: float = 10.0) -> list[int]:
    """Remove a machine's cgroup tree (deepest first) once empty; the pids left in it."""
    deadline = time.monotonic() + wait_s
    while cgroup_pids(cgroup) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = cgroup_pids(cgroup)
    if left or not cgroup.is_dir():
        return left
    for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        cgroup.rmdir()
    return []


def sweep_machines(prefix: str, timeout_s: float = HALT_TIMEOUT_S) -> list[str]:
    """Halt machines a dead watcher of cloud `prefix` left (SIGTERM to their nspawn) and
    remove their cgroups; what could not be removed."""
    groups = sorted(CGROUP_ROOT.glob(f"{prefix}-*")) if CGROUP_ROOT.is_dir() else []
    for group in groups:
        for pid in cgroup_pids(group):
            if "systemd-nspawn" in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
    left = []
    for group in groups:
        if remove_cgroup(group, wait_s=timeout_s):
            left.append(f"cgroup {group}")
    return left


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
