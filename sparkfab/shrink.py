"""Removing surplus workers: what `fab provision --workers N` does below the current count.

Each surplus worker (the highest-numbered, see instances.plan_workers) is drained, its
Spark worker stopped, then its instance terminated, and the inventory written without it.

Draining uses Spark standalone's decommission (`spark.decommission.enabled`, set in
spark-defaults.conf by the install): SIGPWR to the worker JVM makes it tell the master,
which launches no new executor there and tells each application's driver. SIGPWR goes to
the worker's executor JVMs too: the master's word reaches a driver before an executor
that was still starting has registered, and such an executor then got tasks until its
application ended (seen with Spark 4.0.1 on a loaded machine). Signalled itself, each
executor tells its driver, takes no new tasks and exits once its running ones are done. The
worker's own /json/ (read on the node, like the master's) lists its executors: drained
means that list is empty. A worker installed before decommission was configured (SIGPWR
would kill it) is instead waited on until its executors end with their applications.
Either way there is a deadline: past it nothing is terminated and the user is told why.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparkfab import inventory, ports
from sparkfab.aws import instances
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory, Node
from sparkfab.layout import LAYOUT
from sparkfab.remote import Remote
from sparkfab.spark import stop_service

DEFAULT_DRAIN_TIMEOUT_S = 600.0
POLL_S = 2.0
# The worker UI answers in well under a second; seconds when the node is busy.
UI_TIMEOUT_S = 20
PROGRESS_EVERY_S = 30.0
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
DECOMMISSION_KEY = "spark.decommission.enabled"

UNKNOWN = ["unknown/?"]  # a running worker whose UI has not answered yet

Say = Callable[[str], None]
# drain(inventory, nodes): drain and stop the Spark workers of these nodes (over SSH).
Drain = Callable[[Inventory, list[Node]], None]


def worker_json_url(node: Node) -> str:
    return f"http://{node.private_ip}:{ports.WORKER_UI}/json/"


def decommission_command() -> str:
    """SIGPWR to the node's worker JVM, only when its Spark config enables decommission
    (without the handler SIGPWR would kill the JVM). Prints what it did."""
    conf = shlex.quote(f"{LAYOUT.spark_conf}/spark-defaults.conf")
    key = DECOMMISSION_KEY.replace(".", r"\.")
    pattern = shlex.quote(f"^{key}[[:space:]]+true")
    user = shlex.quote(LAYOUT.service_user)
    jvm = shlex.quote(WORKER_CLASS.replace(".", r"\."))
    executors = shlex.quote(EXECUTOR_CLASS.replace(".", r"\."))
    return (f"if ! grep -Eq {pattern} {conf}; then echo no-decommission; "
            f"elif pkill -PWR -u {user} -f {jvm}; then "
            f"pkill -PWR -u {user} -f {executors} || true; echo decommissioning; "
            "else echo no-worker; fi")


def worker_state_command(node: Node) -> str:
    """Prints 'no-worker' when no worker JVM runs on the node, else the worker's /json/
    (its executors), else nothing and fails."""
    user = shlex.quote(LAYOUT.service_user)
    jvm = shlex.quote(WORKER_CLASS.replace(".", r"\."))
    return (f"if ! pgrep -u {user} -f {jvm} >/dev/null; then echo no-worker; "
            f"else curl -sf --max-time {UI_TIMEOUT_S} {worker_json_url(node)}; fi")


class NoAnswer(Exception):
    """The worker runs but its UI did not answer in time."""


class Drainer:
    """Drains and stops workers over SSH (the operator's Remote to the cluster)."""

    def __init__(self, remote: Remote, say: Say, timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                 poll_s: float = POLL_S) -> None:
        self.remote = remote
        self.say = say
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    def executors(self, node: Node) -> list[str] | None:
        """'app/executor' ids running on the node's worker; None when no worker JVM runs
        there. A worker that runs but whose UI does not answer (a loaded node) raises
        NoAnswer: it may hold executors, so it is never taken for an idle one."""
        r = self.remote.run(node, worker_state_command(node), step="drain", echo=False,
                            timeout=60)
        if r.error:  # SSH itself failed: the node cannot be drained
            raise UserError(
                f"{node.name} ({self.remote.inv.address(node)}): cannot reach it to drain its "
                f"executors: {r.error}",
                hint="nothing was terminated; if the node is broken, run the same command "
                "with --drain-timeout 0 to terminate it without draining")
        text = r.stdout.strip()
        if r.ok and text == "no-worker":
            return None
        try:
            doc = json.loads(text) if r.ok else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise NoAnswer(f"{node.name}: its Spark worker runs but its UI did not answer: "
                           + (" | ".join(r.tail) or text[-200:] or f"exit {r.exit_code}"))
        return [f"{e.get('appid')}/{e.get('id')}" for e in doc.get("executors", [])]

    def _executors_or(self, node: Node, last: list[str]) -> list[str] | None:
        try:
            return self.executors(node)
        except NoAnswer:
            return last

    def drain(self, node: Node) -> None:
        """Until the node's worker runs no executor (decommissioned first when it can be)."""
        try:
            running = self.executors(node)
        except NoAnswer as exc:
            self.say(f"{exc}; retrying while draining")
            running = list(UNKNOWN)  # drain as if it held executors
        if running is None:
            self.say(f"{node.name}: no Spark worker runs there: nothing to drain")
            return
        how = self.remote.run(node, decommission_command(), step="drain", echo=False,
                              timeout=30)
        mode = how.stdout.strip() if how.ok else ""
        if mode == "decommissioning":
            self.say(f"{node.name}: decommissioned: no new executors go there; "
                     + (f"waiting for {_describe(running)} to finish their running tasks"
                        if running else "no executors were running"))
        elif mode == "no-decommission":
            self.say(f"{node.name}: its Spark config predates decommission (re-run the install "
                     "to enable it); " + (f"waiting for {_describe(running)} to end with "
                                          "their applications" if running else
                                          "no executors running"))
        else:
            raise UserError(f"{node.name}: could not decommission its Spark worker: "
                            + (" | ".join(how.tail) or mode or "no output"),
                            hint="nothing was terminated; `fab logs` shows the worker's log")
        start = time.monotonic()
        next_note = start + PROGRESS_EVERY_S
        while running:
            waited = time.monotonic() - start
            if waited > self.timeout_s:
                raise UserError(
                    f"{node.name} still runs {_describe(running)} after "
                    f"{self.timeout_s:.0f}s of draining; nothing was terminated",
                    hint="it takes no new executors now: run the same command again when "
                    "the application is done, give --drain-timeout SECONDS to wait longer, "
                    "or --drain-timeout 0 to terminate it now (its tasks then fail and are "
                    "retried on the other workers)")
            if time.monotonic() >= next_note:
                self.say(f"{node.name}: still draining, {_describe(running)} running "
                         f"({waited:.0f}s of {self.timeout_s:.0f}s)")
                next_note += PROGRESS_EVERY_S
            time.sleep(self.poll_s)
            running = self._executors_or(node, running) or []
        self.say(f"{node.name}: drained in {time.monotonic() - start:.0f}s")

    def stop(self, node: Node) -> None:
        r = stop_service(self.remote, node)
        if not r.ok:
            raise UserError(f"{node.name}: stopping its Spark worker failed: "
                            + (" | ".join(r.tail) or r.error or f"exit {r.exit_code}"),
                            hint="nothing was terminated; `fab ssh --node "
                            f"{node.name}` and `sparkfab-service status spark-worker`")
        self.say(f"{node.name}: Spark worker stopped")

    def __call__(self, inv: Inventory, nodes: list[Node]) -> None:
        for node in nodes:
            self.drain(node)
        for node in nodes:
            self.stop(node)


def _describe(executors: list[str]) -> str:
    if executors == UNKNOWN:
        return "its executors (its UI has not answered yet)"
    apps = ", ".join(sorted({e.split("/", 1)[0] for e in executors}))
    return f"{len(executors)} executor(s) of {apps}"


def ssh_drain(say: Say, timeout_s: float, directory: Path | None = None) -> Drain:
    """The real drain: over SSH, trusting only the cluster's recorded host keys."""

    def drain(inv: Inventory, nodes: list[Node]) -> None:
        with Remote(inv, known_hosts=inventory.known_hosts_path(inv.cluster, directory),
                    out=say, boot_deadline_s=30.0) as remote:
            Drainer(remote, say, timeout_s)(inv, nodes)

    return drain


def forget_host_keys(path: Path, addresses: set[str]) -> None:
    """Drop the removed nodes' lines from the cluster's known_hosts (their IPs get reused)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.split(" ", 1)[0] not in addresses]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


def remove_workers(ec2: Any, cluster: str, surplus: list[dict[str, Any]], workers: int,
                   say: Say, *, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                   drain: Drain | None = None, directory: Path | None = None) -> list[str]:
    """Drain, stop and terminate the surplus worker instances; 'name (id)' of each removed."""
    labels = [f"{instances.name_of(i)} ({i['InstanceId']})" for i in surplus]
    say(f"shrinking cluster {cluster} to {workers} worker(s): removing {', '.join(labels)}")
    ids = {i["InstanceId"] for i in surplus}
    inv = inventory.load(cluster, directory)
    known_hosts = inventory.known_hosts_path(cluster, directory)
    nodes = [n for n in inv.nodes if n.instance_id in ids] if inv else []
    if drain_timeout_s <= 0:
        say("not draining (--drain-timeout 0): executors there are killed; Spark retries "
            "their tasks on the other workers")
    elif not nodes or not known_hosts.is_file():
        say("no Spark installed there by this inventory (no recorded host keys): nothing to "
            "drain")
    else:
        (drain or ssh_drain(say, drain_timeout_s, directory))(inv, nodes)  # type: ignore[arg-type]
    instances.terminate(ec2, sorted(ids), say)
    forget_host_keys(known_hosts, {a for n in nodes for a in (n.private_ip, n.public_ip) if a})
    for label in labels:
        say(f"{label}: terminated")
    return labels
