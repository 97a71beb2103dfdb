"""Spark standalone on the cluster: start the daemons, wait until healthy, report, submit.

The master's `/json/` (on its private address, read over SSH on the master, so it is never
exposed) is the one source of truth for health: a worker counts only when it is ALIVE there
with the cores and memory it was configured with.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparkfab import ports
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, Inventory, Node, known_hosts_path
from sparkfab.layout import LAYOUT
from sparkfab.remote import Remote, SshError, StepResult
from sparkfab.render import render
from sparkfab.sizing import WorkerResources

EVENT_LOG_PREFIX = "spark-events/"  # in the cluster's bucket; applications' event logs
MASTER_START_TIMEOUT_S = 90.0
POLL_S = 1.0
LOG_TAIL_LINES = 20


def service_name(node: Node) -> str:
    return "spark-master" if node.role == ROLE_MASTER else "spark-worker"


def master_url(inv: Inventory) -> str:
    return f"spark://{inv.master.private_ip}:{ports.MASTER_RPC}"


def master_json_url(inv: Inventory) -> str:
    return f"http://{inv.master.private_ip}:{ports.MASTER_UI}/json/"


# ---- services ----------------------------------------------------------------------------


def start_service(remote: Remote, node: Node) -> StepResult:
    """Start the node's daemon, restarting it if its configuration changed."""
    script = render("start-service.sh", layout=LAYOUT.as_dict(), name=service_name(node))
    return remote.run_script(node, "service", script, timeout=120)


def stop_service(remote: Remote, node: Node) -> StepResult:
    cmd = f"{LAYOUT.bin_dir}/sparkfab-service stop {service_name(node)}"
    return remote.run(node, cmd, step="stop", timeout=60)


def daemon_pid(remote: Remote, node: Node) -> int | None:
    """The pid of the node's Spark JVM, or None when it is not running."""
    cmd = f"{LAYOUT.bin_dir}/sparkfab-service status {service_name(node)}"
    r = remote.run(node, cmd, step="status", echo=False, timeout=30)
    for word in r.stdout.split():
        if word.startswith("pid="):
            return int(word[4:])
    return None


def service_log_tail(remote: Remote, node: Node, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The daemon's last log lines: the supervisor's log, or the systemd journal."""
    name = service_name(node)
    cmd = (
        f"if [ -d /run/systemd/system ]; then journalctl -u {name} -n {lines} --no-pager; "
        f"else tail -n {lines} {LAYOUT.log_dir}/{name}.log; fi"
    )
    r = remote.run(node, cmd, step="log", echo=False, timeout=30)
    return r.stdout.splitlines()[-lines:]


# ---- health ------------------------------------------------------------------------------


def master_json(remote: Remote, inv: Inventory) -> dict[str, Any] | None:
    """The master's /json/ status, fetched on the master; None when it does not answer."""
    r = remote.run(inv.master, f"curl -sf --max-time 5 {master_json_url(inv)}",
                   step="health", sudo=False, echo=False, timeout=30)
    if not r.ok:
        return None
    try:
        return dict(json.loads(r.stdout))
    except ValueError:
        return None


def wait_for_master(remote: Remote, inv: Inventory,
                    timeout_s: float = MASTER_START_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = master_json(remote, inv)
        if doc is not None and doc.get("status") == "ALIVE":
            return doc
        if time.monotonic() > deadline:
            tail = service_log_tail(remote, inv.master)
            raise UserError(
                f"the Spark master on {inv.master.name} did not come up in {timeout_s:.0f}s; "
                "its log ends:\n  " + "\n  ".join(tail),
                hint="fix the cause shown and re-run the install",
            )
        time.sleep(POLL_S)


def _alive_by_host(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """ALIVE workers by host (a restarted worker leaves a DEAD entry behind)."""
    return {w["host"]: w for w in doc.get("workers", []) if w.get("state") == "ALIVE"}


def worker_problems(
    doc: Mapping[str, Any], expected: Mapping[str, WorkerResources]
) -> dict[str, str]:
    """Why each expected worker is not (yet) as configured; empty when all are."""
    alive = _alive_by_host(doc)
    problems = {}
    for ip, want in expected.items():
        w = alive.get(ip)
        if w is None:
            seen = [x.get("state") for x in doc.get("workers", []) if x.get("host") == ip]
            problems[ip] = f"not ALIVE (seen: {', '.join(seen) or 'never registered'})"
        elif (int(w["cores"]), int(w["memory"])) != (want.cores, want.memory_mb):
            problems[ip] = (f"offers {w['cores']} cores / {w['memory']} MB, configured "
                            f"{want.cores} / {want.memory_mb} MB")
    return problems


def wait_for_workers(
    remote: Remote,
    inv: Inventory,
    expected: Mapping[str, WorkerResources],
    timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Block until the master lists every expected worker ALIVE with its cores and memory."""
    deadline = time.monotonic() + timeout_s
    problems: dict[str, str] = {ip: "master not answering" for ip in expected}
    while time.monotonic() < deadline:
        doc = master_json(remote, inv)
        if doc is not None:
            problems = worker_problems(doc, expected)
            if not problems:
                return doc
        time.sleep(POLL_S)
    by_ip = {n.private_ip: n for n in inv.workers}
    lines = []
    for ip, why in problems.items():
        node = by_ip.get(ip)
        lines.append(f"{node.name if node else ip} ({ip}): {why}")
        if node is not None:
            lines.extend(f"  {node.name}| {x}" for x in service_log_tail(remote, node, 8))
    raise UserError(
        f"Spark workers not healthy after {timeout_s:.0f}s:\n" + "\n".join(lines),
        hint="the log lines above show the worker's side; re-run the install once fixed",
    )


# ---- status for `fab status` ---------------------------------------------------------------


@dataclass
class WorkerStatus:
    host: str
    state: str  # ALIVE, the state of its last registration, or NOT_REGISTERED
    cores: int
    cores_used: int
    memory_mb: int
    memory_used_mb: int
    name: str = ""


NOT_REGISTERED = "NOT_REGISTERED"


@dataclass
class SparkStatus:
    master_url: str
    status: str = "UNKNOWN"  # the master's own status, ALIVE when healthy
    workers: list[WorkerStatus] = field(default_factory=list)  # the inventory's, in order
    unknown_hosts: list[str] = field(default_factory=list)  # ALIVE, not in the inventory
    active_apps: list[str] = field(default_factory=list)
    completed_apps: int = 0
    error: str | None = None

    @property
    def alive_workers(self) -> int:
        return sum(w.state == "ALIVE" for w in self.workers)

    def lines(self) -> list[str]:
        if self.error:
            return [f"spark: {self.master_url}: {self.error}"]
        out = [f"spark: master {self.master_url} {self.status}, {self.alive_workers} of "
               f"{len(self.workers)} workers ALIVE"]
        for w in self.workers:
            out.append(f"  worker {w.name or w.host} ({w.host}): {w.state}, cores "
                       f"{w.cores_used}/{w.cores} used, memory {w.memory_used_mb}/"
                       f"{w.memory_mb} MB used")
        if self.unknown_hosts:
            out.append("  also registered, not in the inventory (not counted): "
                       + ", ".join(self.unknown_hosts))
        apps = ", ".join(self.active_apps) or "none"
        out.append(f"  applications running: {apps}; completed: {self.completed_apps}")
        return out


def parse_status(inv: Inventory, doc: Mapping[str, Any]) -> SparkStatus:
    """Spark's view of the inventory's workers: each counts once, and only when ALIVE now.

    The master keeps a DEAD entry for every earlier registration of a restarted worker,
    and lists any host that registers, in the inventory or not: neither is a worker of
    this cluster that can run tasks.
    """
    alive = _alive_by_host(doc)
    last_seen = {w["host"]: str(w.get("state")) for w in doc.get("workers", [])}
    workers = []
    for node in inv.workers:
        w = alive.get(node.private_ip)
        if w is None:
            workers.append(WorkerStatus(node.private_ip,
                                        last_seen.get(node.private_ip, NOT_REGISTERED),
                                        0, 0, 0, 0, node.name))
        else:
            workers.append(WorkerStatus(node.private_ip, "ALIVE", int(w["cores"]),
                                        int(w["coresused"]), int(w["memory"]),
                                        int(w["memoryused"]), node.name))
    ours = {n.private_ip for n in inv.workers}
    return SparkStatus(
        master_url=master_url(inv),
        status=str(doc.get("status", "UNKNOWN")),
        workers=workers,
        unknown_hosts=sorted(set(alive) - ours),
        active_apps=[f"{a.get('name')} ({a.get('id')})" for a in doc.get("activeapps", [])],
        completed_apps=len(doc.get("completedapps", [])),
    )


def cluster_status(
    inv: Inventory, *, inventory_dir: Path | None = None, remote: Remote | None = None
) -> SparkStatus:
    """Spark's view of the cluster, for `fab status`; never raises for an unreachable master."""
    own = remote is None
    remote = remote or Remote(inv, known_hosts=known_hosts_path(inv.cluster, inventory_dir),
                              out=None, boot_deadline_s=15)
    try:
        doc = master_json(remote, inv)
    except SshError as exc:
        return SparkStatus(master_url(inv), error=exc.message)
    finally:
        if own:
            remote.close()
    if doc is None:
        return SparkStatus(master_url(inv), error="the master's UI does not answer "
                           "(is spark-master running? `fab ssh` and sparkfab-service status)")
    return parse_status(inv, doc)


def status_lines(inv: Inventory | None, master_running: bool,
                 inventory_dir: Path | None = None) -> list[str]:
    """`fab status`'s Spark lines: only for a cluster installed from here (its known_hosts
    exists) whose master instance runs; nothing to ask otherwise."""
    if (inv is None or not master_running
            or not known_hosts_path(inv.cluster, inventory_dir).exists()):
        return []
    return cluster_status(inv, inventory_dir=inventory_dir).lines()


# ---- jobs --------------------------------------------------------------------------------


def upload(remote: Remote, node: Node, local: Path, dest: str, mode: str = "0644") -> None:
    """Copy a local file to `dest` on the node (readable by the service user)."""
    staged = f".sparkfab/upload-{local.name}"
    remote.connection(node).run("mkdir -p -m 0700 .sparkfab", hide=True, in_stream=False)
    remote.connection(node).put(str(local), staged)
    r = remote.run(node, f"install -D -m {mode} {shlex.quote(staged)} {shlex.quote(dest)}",
                   step="upload", echo=False)
    if not r.ok:
        raise UserError(f"upload of {local.name} to {node.name}:{dest} failed: "
                        + " | ".join(r.tail))


def submit_command(app: str, args: list[str] | None = None,
                   conf: Mapping[str, str] | None = None) -> str:
    """spark-submit run as the service user (it alone can read the secret in the config)."""
    parts = ["runuser", "-u", LAYOUT.service_user, "--", LAYOUT.spark_submit]
    for key, value in (conf or {}).items():
        parts += ["--conf", f"{key}={value}"]
    parts += [app, *(args or [])]
    return " ".join(shlex.quote(p) for p in parts)


def submit(
    remote: Remote,
    inv: Inventory,
    app: str,
    args: list[str] | None = None,
    *,
    conf: Mapping[str, str] | None = None,
    timeout: float | None = None,
    echo: bool = True,
) -> StepResult:
    """spark-submit `app` (a path on the master) in client mode: the driver runs on the master."""
    return remote.run(inv.master, submit_command(app, args, conf), step="submit",
                      timeout=timeout, echo=echo)


def ensure_event_log_dir(inv: Inventory, s3: Any = None) -> None:
    """Spark refuses to start an application whose event log directory does not exist."""
    if s3 is None:
        import boto3

        s3 = boto3.client("s3", region_name=inv.region, endpoint_url=inv.endpoint_url)
    s3.put_object(Bucket=inv.bucket, Key=EVENT_LOG_PREFIX, Body=b"")
