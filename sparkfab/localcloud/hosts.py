"""A cloud of real hosts on one Linux machine: network namespaces on a bridge, each with sshd.

Each host is a network namespace with its own IP and a private mount namespace: empty
per-node directories over /opt, /home, /root and /tmp (a fresh machine's), and copy-on-write
overlays of the real /etc, /var and /run (so apt/dpkg state exists, and what one node writes
there stays on that node). A real OpenSSH server runs in it with its own host key. moto_server
on the bridge address plays S3 (and EC2/IAM) for the nodes.

    with LocalCloud("sfc1", "10.77.1.0/24", workdir=Path(".cache/localcloud/sfc1")) as cloud:
        master = cloud.add_host("master", "10.77.1.10", [public_key])
        url = cloud.start_moto()

Everything started is stopped by pid in `down()` (also run at interpreter exit as a safety
net). A run killed outright leaves its resources behind; the next `up()` with the same prefix
finds them through the lock file in `workdir` and removes them first.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from sparkfab.errors import UserError
from sparkfab.localcloud import netns

SSHD = "/usr/sbin/sshd"
MOTO_MODULE = "sparkfab.localcloud.motoserver"
SSH_PORT = 22
# Per-node empty directories: what a freshly launched instance starts without.
EMPTY_MOUNTS = ("/opt", "/home", "/root", "/tmp")
# Per-node copy-on-write views of the machine's own: package state, config, runtime files.
OVERLAY_MOUNTS = ("/etc", "/var", "/run")
BOOT_TIMEOUT_S = 15.0
# moto_server imports all of moto first: ~3 s idle, over 15 s while nodes install beside it.
MOTO_START_TIMEOUT_S = 90.0
LOCAL_REGION = "eu-west-3"  # what moto is asked for; EU like every sparkfab region
# moto without IAM authorization accepts any credentials: these dummies mean a real key is
# never sent to it. A booted cloud turns authorization on, and its callers sign as moto
# principals instead (principals.py).
MOTO_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
_HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


@dataclass
class Host:
    name: str
    ip: str
    namespace: str
    sshd_pid: int
    host_public_key: str  # a known_hosts line: "ip keytype base64"
    node_dir: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def exec_argv(self, *argv: str) -> list[str]:
        """argv that runs a command inside this host (its network and mount namespaces)."""
        return ["nsenter", f"--target={self.sshd_pid}", "--net", "--mount", "--", *argv]


def missing_requirements() -> list[str]:
    """Why the local cloud cannot run on this machine (empty when it can)."""
    why = []
    if os.geteuid() != 0:
        why.append("needs root (network namespaces, bridges, mounts)")
    for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            why.append(f"`{tool}` not found")
    if not Path(SSHD).exists():
        why.append(f"{SSHD} not found (apt-get install openssh-server)")
    if not why:
        probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
        if probe.returncode != 0:
            why.append("cannot create network/mount namespaces here (no CAP_SYS_ADMIN?)")
    return why


def derived_subnet(base: str, k: int) -> str:
    """A subnet apart from `base`, for a cloud beside it: 10.77.1.0/24, k=1 -> 10.77.101.0/24."""
    net = ipaddress.IPv4Network(base)
    return str(
        ipaddress.IPv4Network(
            (int(net.network_address) + k * 100 * net.num_addresses, net.prefixlen)
        )
    )


class LocalCloud:
    """Bridge + hosts + moto_server, all named from `prefix`; a context manager."""

    def __init__(
        self,
        prefix: str = "sf",
        subnet: str = "10.77.0.0/24",
        workdir: Path | None = None,
    ) -> None:
        self.names = netns.Names(prefix)
        self.prefix = prefix
        self.subnet = ipaddress.IPv4Network(subnet)
        self.bridge_interface = netns.bridge_address(subnet)
        self.bridge_ip = str(self.bridge_interface.ip)
        self.workdir = (workdir or Path(".cache") / "localcloud" / prefix).resolve()
        self.hosts: dict[str, Host] = {}
        self.moto_endpoint: str | None = None
        self._moto: subprocess.Popen[bytes] | None = None
        self._lock_fh: object | None = None
        self._is_up = False

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> LocalCloud:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> LocalCloud:
        why = missing_requirements()
        if why:
            raise UserError(
                "the local cloud cannot start: " + "; ".join(why),
                hint="run as root on Linux with iproute2 and openssh-server",
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        atexit.register(self.down)
        self._is_up = True
        try:
            netns.create_bridge(self.names.bridge, self.bridge_interface)
        except Exception:
            self.down()
            raise
        return self

    def _take_lock(self) -> None:
        fh = open(self.workdir / "lock", "a+")  # noqa: SIM115 (held for the cloud's lifetime)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise UserError(
                f"local cloud {self.prefix!r} is already running (lock held on "
                f"{self.workdir / 'lock'})",
                hint="stop it first, or use another prefix and subnet",
            ) from None
        self._lock_fh = fh
        # We hold the lock: anything left under this prefix belongs to a run that died.
        sweep(self.prefix, self.workdir)

    def down(self) -> None:
        """Stop and remove everything this cloud made. Idempotent; raises if something stays."""
        if not self._is_up:
            return
        stubborn: list[int] = []
        for name in list(self.hosts):
            stubborn += self.remove_host(name)
        if self._moto is not None:
            stubborn += netns.stop_pids([self._moto.pid])
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._moto.wait(timeout=5)
            self._moto = None
            self.moto_endpoint = None
            (self.workdir / "moto.json").unlink(missing_ok=True)
        netns.delete_link(self.names.bridge)
        leftovers = sweep(self.prefix, self.workdir)
        self._is_up = False
        atexit.unregister(self.down)
        if self._lock_fh is not None:
            self._lock_fh.close()  # type: ignore[attr-defined]
            self._lock_fh = None
        if stubborn or leftovers:
            raise RuntimeError(
                f"local cloud {self.prefix}: could not remove {leftovers} / stop pids {stubborn}"
            )

    # ---- hosts -----------------------------------------------------------------------

    def next_free_ip(self) -> str:
        used = {self.bridge_ip, *(h.ip for h in self.hosts.values())}
        for addr in self.subnet.hosts():
            if str(addr) not in used and int(addr) - int(self.subnet.network_address) >= 10:
                return str(addr)
        raise UserError(f"no free address left in {self.subnet}")

    def add_host(self, name: str, ip: str | None, authorized_keys: list[str]) -> Host:
        """A namespace at `ip` running sshd that accepts `authorized_keys` for root."""
        # These hosts (not the booted machines of machines.py) borrow this machine's
        # filesystem with per-node mounts over these directories.
        for mount in (*EMPTY_MOUNTS, *OVERLAY_MOUNTS):
            if self.workdir == Path(mount) or Path(mount) in self.workdir.parents:
                raise UserError(
                    f"local cloud workdir {self.workdir} is under {mount}, which each sshd "
                    "host mounts over with its own",
                    hint="put the workdir elsewhere, e.g. .cache/localcloud in the repository",
                )
        if not self._is_up:
            raise RuntimeError("call up() before add_host()")
        ip = ip or self.next_free_ip()
        self._check_new_host(name, ip)
        offset = int(ipaddress.IPv4Address(ip)) - int(self.subnet.network_address)
        ns = self.names.namespace(name)
        outer = self.names.veth_outer(offset)
        node = self.workdir / "nodes" / name
        if node.exists():
            shutil.rmtree(node)
        _prepare_node_dir(node, ip, authorized_keys)
        netns.create_namespace(
            ns,
            self.names.bridge,
            outer,
            self.names.veth_inner_tmp(offset),
            ipaddress.IPv4Interface(f"{ip}/{self.subnet.prefixlen}"),
        )
        # A host re-made at an address (a re-launched instance) has a new MAC: drop the old
        # neighbour entry, or connections wait for it to go stale first.
        subprocess.run(["ip", "neigh", "flush", "to", ip], capture_output=True, check=False)
        log = open(node / "sshd.log", "ab")  # noqa: SIM115 (handed to the child)
        try:
            proc = subprocess.Popen(
                [
                    *_taskset(offset),
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    _boot_script(node),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        pub = (node / "ssh_host_ed25519_key.pub").read_text().split()
        host = Host(name, ip, ns, proc.pid, f"{ip} {pub[0]} {pub[1]}", node, proc)
        # Registered before the wait, so down() cleans it up even if sshd never comes up.
        self.hosts[name] = host
        _wait_for_port(ip, SSH_PORT, proc, node / "sshd.log")
        return host

    def _check_new_host(self, name: str, ip: str) -> None:
        if not _HOST_NAME.match(name):
            raise UserError(f"host name {name!r}: use lowercase letters, digits and '-'")
        if name in self.hosts:
            raise UserError(f"host {name!r} already exists in local cloud {self.prefix}")
        addr = ipaddress.IPv4Address(ip)
        if (
            addr not in self.subnet
            or ip == self.bridge_ip
            or addr in (self.subnet.network_address, self.subnet.broadcast_address)
        ):
            raise UserError(
                f"{ip} is not a free host address of {self.subnet}",
                hint=f"the bridge is {self.bridge_ip}",
            )
        if any(h.ip == ip for h in self.hosts.values()):
            raise UserError(f"{ip} is already used by another host")

    def remove_host(self, name: str) -> list[int]:
        """Stop every process of the host, delete its namespace and its node directory."""
        host = self.hosts.pop(name, None)
        ns = self.names.namespace(name)
        stubborn = netns.delete_namespace(ns, self._outer_for(host, name))
        if host is not None and host._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                host._process.wait(timeout=5)
        node = self.workdir / "nodes" / name
        if node.exists():
            shutil.rmtree(node, ignore_errors=True)
        return stubborn

    def _outer_for(self, host: Host | None, name: str) -> str:
        if host is None:
            return ""
        offset = int(ipaddress.IPv4Address(host.ip)) - int(self.subnet.network_address)
        return self.names.veth_outer(offset)

    def known_hosts(self) -> str:
        """known_hosts lines for every host: what an SSH client should trust, and only that."""
        return "".join(h.host_public_key + "\n" for h in self.hosts.values())

    # ---- moto ------------------------------------------------------------------------

    def start_moto(self, port: int | None = None, console_dir: Path | None = None) -> str:
        """Run moto_server on the bridge address (reachable from every node); its URL.

        Its `GetConsoleOutput` answers with `console_dir/<instance id>.log` (motoserver.py).
        """
        if self._moto is not None:
            return self.moto_endpoint  # type: ignore[return-value]
        port = port or _free_port(self.bridge_ip)
        console_dir = console_dir or self.workdir / "console"
        log = open(self.workdir / "moto.log", "ab")  # noqa: SIM115 (handed to the child)
        try:
            self._moto = subprocess.Popen(
                [sys.executable, "-m", MOTO_MODULE, "--console-dir", str(console_dir),
                 "-H", self.bridge_ip, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        (self.workdir / "moto.json").write_text(
            json.dumps({"pid": self._moto.pid, "host": self.bridge_ip, "port": port})
        )
        self.moto_endpoint = f"http://{self.bridge_ip}:{port}"
        _wait_for_port(self.bridge_ip, port, self._moto, self.workdir / "moto.log",
                       MOTO_START_TIMEOUT_S)
        _wait_for_http(self.moto_endpoint + "/moto-api/", MOTO_START_TIMEOUT_S)
        return self.moto_endpoint

    def s3_client(self, region: str = LOCAL_REGION) -> Any:
        """A boto3 S3 client for this cloud's moto_server (dummy credentials)."""
        import boto3

        if self.moto_endpoint is None:
            raise RuntimeError("call start_moto() first")
        from sparkfab.localcloud import principals

        return boto3.client("s3", endpoint_url=self.moto_endpoint, region_name=region,
                            **principals.credentials(self.workdir, principals.ADMIN))

    @property
    def moto_pid(self) -> int | None:
        return self._moto.pid if self._moto is not None else None


# ---- helpers -------------------------------------------------------------------------


def _prepare_node_dir(node: Path, ip: str, authorized_keys: list[str]) -> None:
    for mount in EMPTY_MOUNTS:
        (node / "fs" / mount.strip("/")).mkdir(parents=True)
    os.chmod(node / "fs" / "tmp", 0o1777)
    os.chmod(node / "fs" / "root", 0o700)
    for mount in OVERLAY_MOUNTS:
        for part in ("upper", "work"):
            (node / "overlay" / mount.strip("/") / part).mkdir(parents=True)
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"host-{ip}",
            "-f",
            str(node / "ssh_host_ed25519_key"),
        ],
        check=True,
        capture_output=True,
    )
    keys = node / "authorized_keys"
    keys.write_text("".join(k.strip() + "\n" for k in authorized_keys))
    keys.chmod(0o600)
    (node / "sshd_config").write_text(
        f"""\
ListenAddress {ip}:{SSH_PORT}
HostKey {node}/ssh_host_ed25519_key
PidFile {node}/sshd.pid
AuthorizedKeysFile {keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
# No PAM and no ownership checks: the node's files live in the harness's work directory.
UsePAM no
StrictModes no
PrintMotd no
X11Forwarding no
# Fabric uploads over SFTP; parallel installs open several sessions at once.
Subsystem sftp internal-sftp
MaxStartups 50:30:100
MaxSessions 50
"""
    )


def one_core(offset: int) -> int | None:
    """The one core of this machine a host (and all it starts) is kept on, round robin by
    address. An instance has cores of its own: without this, every node's install or
    executor competes for all the machine's cores, and what one node's work costs next
    to two nodes' (the issue's 1 vs 2 workers) says nothing about a real cluster.
    Nothing is pinned (None) on a one-core machine."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return None
    return cores[offset % len(cores)]


def _taskset(offset: int) -> list[str]:
    core = one_core(offset)
    return [] if core is None else ["taskset", "--cpu-list", str(core)]


def _boot_script(node: Path) -> str:
    """Run inside the host's fresh mount namespace: mount its filesystems, then exec sshd."""
    q = shlex.quote
    lines = ["set -e"]
    for mount in EMPTY_MOUNTS:
        lines.append(f"mount --bind {q(str(node / 'fs' / mount.strip('/')))} {mount}")
    for mount in OVERLAY_MOUNTS:
        ov = node / "overlay" / mount.strip("/")
        opts = f"lowerdir={mount},upperdir={ov / 'upper'},workdir={ov / 'work'}"
        lines.append(f"mount -t overlay overlay -o {q(opts)} {mount}")
    # sshd's privilege-separation directory (checked: it must exist, root-owned, 0755).
    lines.append("mkdir -p -m 0755 /run/sshd")
    lines.append(f"exec {SSHD} -D -f {q(str(node / 'sshd_config'))} -E {q(str(node / 'sshd.log'))}")
    return "\n".join(lines)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_for_port(
    host: str,
    port: int,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = BOOT_TIMEOUT_S,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{log.stem} for {host}:{port} exited with {proc.returncode}: {_tail(log)}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s: {_tail(log)}")


def _wait_for_http(url: str, timeout_s: float = BOOT_TIMEOUT_S) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with opener.open(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def sweep(prefix: str, workdir: Path) -> list[str]:
    """Remove what a cloud with this prefix left behind; returns what could not be removed.

    Only call it while holding the cloud's lock (or knowing no such cloud runs): it kills
    every process in namespaces named `<prefix>-*`.
    """
    from sparkfab.localcloud import machines, nat

    names = netns.Names(prefix)
    # Booted machines first, by SIGTERM to their nspawn (a clean halt), before their
    # namespaces' processes are stopped below.
    left: list[str] = machines.sweep_machines(prefix)
    try:
        nat.remove(prefix)
    except (OSError, nat.NatError) as exc:
        left.append(f"nft table {nat.table_name(prefix)} ({exc})")
    for ns in netns.list_namespaces():
        if ns.startswith(f"{prefix}-"):
            netns.delete_namespace(ns, "")
            if netns.namespace_exists(ns):
                left.append(f"namespace {ns}")
    moto_state = workdir / "moto.json"
    if moto_state.exists():
        with contextlib.suppress(ValueError, OSError, KeyError):
            state = json.loads(moto_state.read_text())
            cmd = _cmdline(int(state["pid"]))
            # The pid may have been reused: kill it only if it is still that moto_server.
            if any(MOTO_MODULE in c for c in cmd) and state["host"] in cmd:
                netns.stop_pids([int(state["pid"])])
        moto_state.unlink(missing_ok=True)
    for line in netns.ip("-o", "link", "show").stdout.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        if ifname == names.bridge or ifname.startswith(f"{prefix}-v"):
            netns.delete_link(ifname)
            if netns.link_exists(ifname):
                left.append(f"link {ifname}")
    nodes = workdir / "nodes"
    if nodes.exists():
        shutil.rmtree(nodes, ignore_errors=True)
        if nodes.exists():
            left.append(str(nodes))
    return left
