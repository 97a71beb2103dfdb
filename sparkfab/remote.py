"""SSH to a cluster's nodes with Fabric: verified host keys, parallel steps, clear failures.

- Host keys come only from the cluster's known_hosts file (next to its inventory); an
  unknown or changed key stops the connection, nothing is ever auto-accepted.
- While a fresh node's sshd is still booting (refused, unreachable, timed out, no banner
  yet) connecting is retried with backoff until a deadline.
- Every line a node prints is shown prefixed with its name; the last lines are kept so a
  failure names the host, the step and what it printed last.
- Each step's time and changes per host are collected for a summary table.
"""

from __future__ import annotations

import contextlib
import errno
import io
import shlex
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut
from paramiko.ssh_exception import NoValidConnectionsError

from sparkfab.errors import UserError
from sparkfab.inventory import Inventory, Node

CONNECT_TIMEOUT_S = 10.0
# A just-launched EC2 instance can take a few minutes before sshd answers.
BOOT_DEADLINE_S = 300.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 15.0
TAIL_LINES = 15
CHANGE_MARK = "sparkfab-changed: "  # printed by the step scripts (templates/_lib.sh.j2)
HOME_DIR = ".sparkfab"  # in the SSH user's home, 0700: step scripts and uploads pass here
STEP_DIR = f"{HOME_DIR}/steps"
# Makes HOME_DIR (and below it DIR) private, whether or not they existed.
PRIVATE_DIR_COMMAND = "mkdir -p -m 0700 {dir} && chmod 0700 " + HOME_DIR + " {dir}"
T = TypeVar("T")


class SshError(UserError):
    """An SSH connection failed for a reason the user can act on."""


class StepFailed(UserError):
    """A step failed on one or more hosts."""

    def __init__(self, failures: Sequence[StepResult]) -> None:
        lines = []
        for r in failures:
            what = f"exit {r.exit_code}" if r.exit_code is not None else r.error
            lines.append(f"{r.host}: step '{r.step}' failed ({what}) after {r.seconds:.1f}s")
            lines.extend(f"  {r.host}| {line}" for line in r.tail)
        super().__init__(
            "\n".join(lines),
            hint="fix the cause and run the same command again: finished steps are skipped",
        )
        self.failures = list(failures)


@dataclass
class StepResult:
    host: str
    step: str
    ok: bool
    seconds: float
    changes: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    exit_code: int | None = None
    error: str = ""  # set when there is no exit code (SSH failure, timeout)
    stdout: str = ""


class _Printer:
    """Serializes lines from many threads onto one output function."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self._out(line)


class _HostStream(io.TextIOBase):
    """A file-like sink for a remote command's output: prefixes lines, keeps the tail."""

    def __init__(self, host: str, printer: _Printer | None) -> None:
        self.host = host
        self.printer = printer
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.changes: list[str] = []
        self._partial = ""

    def write(self, data: str) -> int:
        text = self._partial + data
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._line(line)
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def _line(self, line: str) -> None:
        line = line.rstrip("\r")
        if line.startswith(CHANGE_MARK):
            self.changes.append(line[len(CHANGE_MARK):])
            shown = "changed: " + line[len(CHANGE_MARK):]
        else:
            shown = line
        self.tail.append(line)
        if self.printer is not None and line.strip():
            self.printer(f"[{self.host}] {shown}")


def _is_boot_error(exc: BaseException) -> bool:
    """Errors a node gives while it is still booting: worth retrying until the deadline."""
    if isinstance(exc, NoValidConnectionsError):
        return True  # refused or host unreachable on every address
    if isinstance(exc, socket.timeout | TimeoutError | ConnectionResetError | EOFError):
        return True
    if isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT
    ):
        return True
    return isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower()


def public_key_of(private_key: Path) -> str:
    """'type base64' of a private key file (to compare with the key the nodes expect)."""
    key = paramiko.PKey.from_path(private_key)
    return f"{key.get_name()} {key.get_base64()}"


class Remote:
    """Fabric connections to an inventory's nodes, opened on first use and reused."""

    def __init__(
        self,
        inv: Inventory,
        *,
        known_hosts: Path,
        private_key: Path | None = None,
        expected_public_key: str | None = None,
        out: Callable[[str], None] | None = print,
        boot_deadline_s: float = BOOT_DEADLINE_S,
        auth_grace_s: float = 0.0,
    ) -> None:
        """`expected_public_key` ('type base64 ...', the key pair the nodes were given) lets
        an authentication failure say whether the key or the user is wrong. `auth_grace_s`:
        how long to keep retrying a refused key (a node that just booted may not have
        written its authorized_keys yet)."""
        self.inv = inv
        self.known_hosts = known_hosts
        self.private_key = private_key or (
            Path(inv.private_key_path).expanduser() if inv.private_key_path else None
        )
        self.expected_public_key = expected_public_key
        self.printer = _Printer(out) if out is not None else None
        self.boot_deadline_s = boot_deadline_s
        self.auth_grace_s = auth_grace_s
        self._conns: dict[str, Connection] = {}
        self._lock = threading.Lock()
        self._checked = False

    # ---- connections ---------------------------------------------------------------

    def _check_files(self) -> None:
        if self._checked:
            return
        if not self.known_hosts.is_file():
            raise SshError(
                f"no known_hosts file for cluster {self.inv.cluster} at {self.known_hosts}",
                hint="sparkfab trusts only host keys it recorded at provision time; "
                "run `fab provision` again to record them",
            )
        if self.private_key is None or not self.private_key.is_file():
            raise SshError(
                f"private key {self.private_key} not found",
                hint="set public_key_path to the key pair the cluster was provisioned with",
            )
        self._checked = True

    def _known_hosts_stamp(self) -> tuple[int, int]:
        st = self.known_hosts.stat()
        return st.st_mtime_ns, st.st_size

    def _new_connection(self, node: Node) -> Connection:
        # No ssh_config (a user's `ForwardAgent yes` or ProxyCommand never reaches a node),
        # and no agent: neither used for auth nor forwarded.
        config = Config(overrides={"load_ssh_configs": False, "forward_agent": False,
                                   "run": {"in_stream": False}})
        conn = Connection(
            host=self.inv.address(node),
            user=self.inv.ssh_user,
            port=22,
            config=config,
            connect_timeout=int(CONNECT_TIMEOUT_S),
            connect_kwargs={
                "key_filename": [str(self.private_key)],
                "look_for_keys": False,
                "allow_agent": False,
                "banner_timeout": CONNECT_TIMEOUT_S,
                "auth_timeout": CONNECT_TIMEOUT_S,
            },
        )
        # Fabric auto-accepts unknown host keys; sparkfab trusts only the recorded ones.
        conn.client = paramiko.SSHClient()
        conn.client.load_host_keys(str(self.known_hosts))
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn

    def connection(self, node: Node) -> Connection:
        """An open connection to `node`, retrying while its sshd boots."""
        with self._lock:
            self._check_files()
            conn = self._conns.get(node.name)
        if conn is not None and conn.is_connected:
            return conn
        conn = self._open(node)
        with self._lock:
            self._conns[node.name] = conn
        return conn

    def _open(self, node: Node) -> Connection:
        addr = self.inv.address(node)
        start = time.monotonic()
        delay = BACKOFF_FIRST_S
        while True:
            loaded = self._known_hosts_stamp()
            conn = self._new_connection(node)
            try:
                conn.open()
                return conn
            except paramiko.BadHostKeyException as exc:
                raise SshError(
                    f"{node.name} ({addr}): host key CHANGED: the server offered "
                    f"{exc.key.get_name()} {exc.key.fingerprint}, {self.known_hosts} "
                    "records another",
                    hint="if the instance was replaced, delete its line from that file and "
                    "re-provision; otherwise someone may be intercepting the connection",
                ) from None
            except paramiko.AuthenticationException:
                if time.monotonic() - start < self.auth_grace_s:
                    self._say(node, "key refused; the node may still be booting, retrying")
                    time.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                raise self._auth_error(node) from None
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    # A connect can outlast the file's reading: a TCP handshake to a host
                    # still booting waits seconds, while provision records its key. Read
                    # again what was recorded meanwhile before refusing it as unknown.
                    if (self._known_hosts_stamp() != loaded
                            and time.monotonic() - start < self.boot_deadline_s):
                        continue
                    raise SshError(
                        f"{node.name} ({addr}): no host key recorded for it in "
                        f"{self.known_hosts}; refusing to trust an unknown key",
                        hint="re-run `fab provision` to record the nodes' host keys",
                    ) from None
                if not _is_boot_error(exc):
                    raise SshError(f"{node.name} ({addr}): SSH failed: {exc}") from None
                last: BaseException = exc
            except (OSError, EOFError) as exc:
                if not _is_boot_error(exc):
                    raise SshError(f"{node.name} ({addr}): cannot connect: {exc}") from None
                last = exc
            waited = time.monotonic() - start
            if waited + delay > self.boot_deadline_s:
                raise self._unreachable_error(node, last, waited) from None
            self._say(node, f"sshd not ready ({_reason(last)}); retrying in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _auth_error(self, node: Node) -> SshError:
        user, addr = self.inv.ssh_user, self.inv.address(node)
        ours = None
        if self.private_key is not None:
            try:
                ours = public_key_of(self.private_key)
            except Exception:  # an unreadable key: the generic message below still applies
                ours = None
        expected = (
            " ".join(self.expected_public_key.split()[:2]) if self.expected_public_key else None
        )
        if ours and expected and ours != expected:
            return SshError(
                f"{node.name} ({addr}): SSH key refused for {user}: wrong key: "
                f"{self.private_key} is not the private half of the cluster's key pair",
                hint="set public_key_path to the key the cluster was provisioned with",
            )
        if ours and expected:
            return SshError(
                f"{node.name} ({addr}): SSH key refused for {user}: the key is the "
                f"cluster's, so the user is likely wrong",
                hint="set ssh_user to the image's login user (Debian: admin, Ubuntu: "
                "ubuntu, Amazon Linux: ec2-user)",
            )
        return SshError(
            f"{node.name} ({addr}): SSH key refused for {user}: wrong key "
            f"({self.private_key}) or wrong user ({user})",
            hint="check public_key_path and ssh_user (Debian images: admin, Ubuntu: ubuntu)",
        )

    def _unreachable_error(self, node: Node, exc: BaseException, waited: float) -> SshError:
        addr = self.inv.address(node)
        reason = _reason(exc)
        if "refused" in reason:
            hint = "the host is up but sshd does not listen; check the instance's console"
        else:
            hint = (
                "no route or a firewall: is the instance running, does its security group "
                "admit SSH from your address, and is ssh_address (public/private) right?"
            )
        return SshError(
            f"{node.name} ({addr}): no SSH connection after {waited:.0f}s: {reason}", hint=hint
        )

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- commands ------------------------------------------------------------------

    def _say(self, node: Node, line: str) -> None:
        if self.printer is not None:
            self.printer(f"[{node.name}] {line}")

    def as_root(self, command: str) -> str:
        """`command` as root: whole, in bash (root's login shell runs it so) under sudo, as
        `sudo -n CMD` would run only the first word of `if ...; fi` or `a && b`."""
        if self.inv.ssh_user == "root":
            return command
        return f"sudo -n bash -c {shlex.quote(command)}"

    def run(
        self,
        node: Node,
        command: str,
        *,
        step: str,
        sudo: bool = True,
        timeout: float | None = None,
        echo: bool = True,
    ) -> StepResult:
        """Run `command` on `node`; never raises for a failing command (see .ok)."""
        start = time.monotonic()
        stream = _HostStream(node.name, self.printer if echo else None)
        result = StepResult(node.name, step, ok=False, seconds=0.0)
        try:
            conn = self.connection(node)
            res = conn.run(
                self.as_root(command) if sudo else command,
                hide=False,
                warn=True,
                out_stream=stream,
                err_stream=stream,
                timeout=timeout,
            )
            result.exit_code = res.exited
            result.ok = res.exited == 0
            result.stdout = res.stdout
        except SshError as exc:
            result.error = exc.message
            stream.tail.append(exc.message)
        except CommandTimedOut:
            result.error = f"timed out after {timeout:.0f}s"
        except (OSError, EOFError, paramiko.SSHException) as exc:
            result.error = f"SSH connection lost: {exc}"
        stream.finish()
        result.seconds = time.monotonic() - start
        result.changes = stream.changes
        result.tail = list(stream.tail)
        return result

    def put_text(self, node: Node, text: str, remote_path: str, mode: int = 0o600) -> None:
        """Upload `text` (relative paths are under the SSH user's home), created with `mode`."""
        conn = self.connection(node)
        sftp = conn.sftp()
        tmp = f"{remote_path}.part"
        with sftp.open(tmp, "w") as fh:
            fh.chmod(mode)  # before any content is written: secrets are never readable
            fh.write(text.encode())
        sftp.posix_rename(tmp, remote_path)

    def run_script(
        self, node: Node, step: str, script: str, *, timeout: float | None = None
    ) -> StepResult:
        """Upload a rendered script to ~/.sparkfab/steps/<step>.sh, run it as root, and
        remove it (whatever the outcome)."""
        start = time.monotonic()
        path = f"{STEP_DIR}/{step}.sh"
        try:
            conn = self.connection(node)
            conn.run(PRIVATE_DIR_COMMAND.format(dir=STEP_DIR), hide=True, in_stream=False)
            self.put_text(node, script, path, 0o700)
        except SshError as exc:
            return StepResult(node.name, step, False, time.monotonic() - start,
                              error=exc.message, tail=[exc.message])
        except (OSError, EOFError, paramiko.SSHException) as exc:
            msg = f"upload failed: {exc}"
            return StepResult(node.name, step, False, time.monotonic() - start,
                              error=msg, tail=[msg])
        try:
            result = self.run(node, f"bash {path}", step=step, timeout=timeout)
        finally:
            # The rendered step may hold the Spark secret (config): never left behind.
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException, SshError):
                conn.run(f"rm -f {path}", hide=True, warn=True, in_stream=False)
        result.seconds = time.monotonic() - start
        return result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NoValidConnectionsError):
        codes = {getattr(e, "errno", None) for e in exc.errors.values()}
        if errno.ECONNREFUSED in codes:
            return "connection refused"
        if errno.EHOSTUNREACH in codes:
            return "no route to host"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH:
        return "network unreachable"
    return str(exc) or type(exc).__name__


def parallel(nodes: Iterable[Node], fn: Callable[[Node], T]) -> dict[str, T]:
    """fn(node) for every node at once; results by node name. Exceptions propagate after all
    nodes finished (the first one raised), so no host is left half-way unobserved."""
    nodes = list(nodes)
    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = {n.name: pool.submit(fn, n) for n in nodes}
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return {name: f.result() for name, f in futures.items()}


class StepLog:
    """Every step's result per host, for the summary table and the failure report."""

    def __init__(self) -> None:
        self.results: list[StepResult] = []
        self._lock = threading.Lock()

    def add(self, result: StepResult) -> StepResult:
        with self._lock:
            self.results.append(result)
        return result

    def failures(self) -> list[StepResult]:
        return [r for r in self.results if not r.ok]

    def changes(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.results:
            if r.changes:
                out.setdefault(r.host, []).extend(f"{r.step}: {c}" for c in r.changes)
        return out

    def summary(self) -> str:
        """A table: one row per step, one column per host: seconds and changes or FAILED."""
        hosts = list(dict.fromkeys(r.host for r in self.results))
        steps = list(dict.fromkeys(r.step for r in self.results))
        cell: dict[tuple[str, str], str] = {}
        for r in self.results:
            if not r.ok:
                text = f"{r.seconds:.1f}s FAILED"
            elif r.changes:
                text = f"{r.seconds:.1f}s {len(r.changes)} changed"
            else:
                text = f"{r.seconds:.1f}s ok"
            cell[(r.step, r.host)] = text
        width0 = max([len("step"), *map(len, steps)])
        widths = [max(len(h), *(len(cell.get((s, h), "-")) for s in steps)) for h in hosts]
        pairs = list(zip(hosts, widths, strict=True))
        rows = ["step".ljust(width0) + "  " + "  ".join(h.ljust(w) for h, w in pairs)]
        for s in steps:
            cells = "  ".join(cell.get((s, h), "-").ljust(w) for h, w in pairs)
            rows.append(s.ljust(width0) + "  " + cells)
        return "\n".join(row.rstrip() for row in rows)
