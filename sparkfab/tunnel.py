"""`fab ui`: SSH local port forwards to the Spark web UIs, on this machine's loopback only.

The UIs listen on the nodes' private addresses and the security group admits only SSH,
so the browser reaches them through `ssh -N -L 127.0.0.1:LOCAL:PRIVATE_IP:PORT`: never
a public port, never `-g`, never 0.0.0.0. The master UI links to the workers' UIs by
private IP, so each worker's UI gets a forward of its own too.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from sparkfab import ports, sshcli
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory

LOOPBACK = "127.0.0.1"
OPEN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Forward:
    label: str
    local_port: int
    remote_host: str  # a node's private IP, as seen from the master
    remote_port: int

    @property
    def spec(self) -> str:
        return f"{LOOPBACK}:{self.local_port}:{self.remote_host}:{self.remote_port}"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.local_port}/"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port(preferred: int, taken: set[int]) -> int:
    if preferred not in taken and port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def plan(
    inv: Inventory, master_port: int = ports.MASTER_UI, app_port: int = ports.APP_UI,
    workers: bool = True,
) -> list[Forward]:
    """The forwards, on the preferred local ports where free, else on free ones."""
    master_ip = inv.master.private_ip
    wanted = [
        ("master UI", master_port, master_ip, ports.MASTER_UI),
        ("application UI (while a job runs)", app_port, master_ip, ports.APP_UI),
    ]
    if workers:
        base = master_port + 1
        for i, node in enumerate(inv.workers):
            wanted.append((f"{node.name or node.private_ip} UI", base + i, node.private_ip,
                           ports.WORKER_UI))
    taken: set[int] = set()
    out = []
    for label, preferred, host, remote_port in wanted:
        local = _free_port(preferred, taken)
        taken.add(local)
        out.append(Forward(label, local, host, remote_port))
    return out


def plan_one(label: str, preferred: int, remote_host: str, remote_port: int) -> Forward:
    """One forward (`fab notebook`'s), on the preferred local port if free."""
    return Forward(label, _free_port(preferred, set()), remote_host, remote_port)


def ssh_argv(inv: Inventory, forwards: list[Forward]) -> list[str]:
    argv = ["ssh", *sshcli.ssh_options(inv, port_forwards=True), "-N",
            "-o", "ExitOnForwardFailure=yes", "-o", "GatewayPorts=no"]
    for f in forwards:
        argv += ["-L", f.spec]
    return [*argv, inv.address(inv.master)]


def wait_listening(port: int, proc: subprocess.Popen[bytes],
                   timeout_s: float = OPEN_TIMEOUT_S) -> bool:
    """True once ssh listens on the local port; False if ssh exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return True
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def opened(inv: Inventory, forwards: list[Forward]) -> Iterator[subprocess.Popen[bytes]]:
    """The ssh process holding the forwards, once it listens; ended on the way out."""
    proc = subprocess.Popen(ssh_argv(inv, forwards), stdin=subprocess.DEVNULL)
    try:
        if not wait_listening(forwards[0].local_port, proc):
            raise UserError(
                f"the SSH tunnel to {inv.address(inv.master)} did not open "
                f"(ssh exit {proc.poll()})",
                "ssh printed the reason above; `fab ssh` checks plain SSH access",
            )
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(inv: Inventory, forwards: list[Forward], print_line=print) -> int:
    """Hold the tunnel open until Ctrl-C (or until ssh exits); returns ssh's exit status."""
    try:
        with opened(inv, forwards) as proc:
            for f in forwards:
                print_line(f"  {f.label:<36} {f.url}")
            print_line("tunnel open through the master's SSH; Ctrl-C closes it")
            code = proc.wait()
    except KeyboardInterrupt:
        print_line("tunnel closed")
        return 0
    if code != 0:
        raise UserError(
            f"the SSH tunnel to {inv.address(inv.master)} ended with exit {code}",
            "ssh printed the reason above; `fab ssh` checks plain SSH access",
        )
    return code
