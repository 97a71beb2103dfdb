"""`fab provision --workers N` below the current count: which workers go, in what order
(drained and stopped before their instances are terminated), what the inventory and the
output say. moto in-process; the SSH side (sparkfab.shrink.Drainer) against a scripted
node here, against real Spark workers in tests/cluster/test_two_clusters.py."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from invoke import Context
from invoke.exceptions import Exit

import tasks
from sparkfab import inventory, shrink
from sparkfab.aws import instances
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory, Node
from sparkfab.provision import provision
from sparkfab.remote import StepResult

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(120)  # moto in-process: a hang is a bug


@pytest.mark.parametrize("present, workers, launch, remove", [
    (["worker-1", "worker-2"], 1, [], ["worker-2"]),
    (["worker-1", "worker-2", "worker-10", "worker-3"], 2, [], ["worker-3", "worker-10"]),
    (["worker-2", "worker-3"], 2, [], []),  # a lost worker-1 is no reason to launch
    (["worker-2"], 3, ["worker-1", "worker-3"], []),
    ([], 2, ["worker-1", "worker-2"], []),
])
def test_plan_keeps_the_lowest_numbers_and_fills_the_gaps(
        present: list[str], workers: int, launch: list[str], remove: list[str]) -> None:
    assert instances.plan_workers(present, workers) == (launch, remove)


class RecordingDrain:
    """Stands in for the SSH drain; records which nodes, and what state AWS had them in."""

    def __init__(self, cloud: Cloud, fail: str | None = None) -> None:
        self.cloud = cloud
        self.fail = fail
        self.calls: list[tuple[list[str], list[str]]] = []

    def __call__(self, inv: Inventory, nodes: list[Node]) -> None:
        states = {i["InstanceId"]: i["State"]["Name"] for i in self.cloud.tagged_instances()}
        self.calls.append(([n.name for n in nodes], [states[n.instance_id] for n in nodes]))
        if self.fail:
            raise UserError(self.fail, "hint")


def _installed_cluster(cloud: Cloud, workers: int = 2) -> Inventory:
    """A provisioned cluster whose host keys were recorded (what an install leaves)."""
    inv = provision(cloud.settings(workers=workers), cloud.lines(), install=False).inventory
    path = inventory.known_hosts_path(inv.cluster)
    path.write_text("".join(f"{inv.address(n)} ssh-ed25519 AAAAkey{n.name}\n"
                            for n in inv.nodes))
    return inv


def test_shrinking_drains_then_terminates_the_highest_worker(cloud: Cloud) -> None:
    before = _installed_cluster(cloud, workers=2)
    worker_2 = next(n for n in before.nodes if n.name == "worker-2")
    drain = RecordingDrain(cloud)
    say = cloud.lines()
    result = provision(cloud.settings(workers=1), say, install=False, drain=drain)

    assert drain.calls == [(["worker-2"], ["running"])], "drained while still running"
    states = {i["InstanceId"]: i["State"]["Name"] for i in cloud.tagged_instances()}
    assert states[worker_2.instance_id] == "terminated"
    assert [instances.name_of(i) for i in cloud.live_instances()] == ["master", "worker-1"]
    inv = inventory.load(cloud.cluster)
    assert [n.name for n in inv.nodes] == ["master", "worker-1"]
    assert [n.instance_id for n in inv.nodes] == [n.instance_id for n in before.nodes[:2]]
    assert inv.spark_secret == before.spark_secret
    kh = inventory.known_hosts_path(cloud.cluster).read_text()
    assert before.address(worker_2) not in kh and before.address(before.master) in kh
    label = f"worker-2 ({worker_2.instance_id})"
    assert result.removed == [label] and result.created == []
    assert f"shrinking cluster demo to 1 worker(s): removing {label}" in say.text
    assert f"removed: {label}; cluster demo now has 1 worker(s)" in say.text
    assert "nothing new" not in say.text

    grown = provision(cloud.settings(workers=2), cloud.lines(), install=False)
    assert [n.name for n in grown.inventory.nodes] == ["master", "worker-1", "worker-2"]
    assert grown.created == ["1 instance(s)"]


def test_a_failed_drain_terminates_nothing(cloud: Cloud) -> None:
    before = _installed_cluster(cloud, workers=2)
    drain = RecordingDrain(cloud, fail="worker-2 still runs 1 executor(s)")
    with pytest.raises(UserError, match="still runs"):
        provision(cloud.settings(workers=1), cloud.lines(), install=False, drain=drain)
    assert len(cloud.live_instances()) == 3
    assert inventory.load(cloud.cluster) == before


def test_a_never_installed_worker_is_removed_without_ssh(cloud: Cloud) -> None:
    provision(cloud.settings(workers=2), cloud.lines(), install=False)
    say = cloud.lines()
    provision(cloud.settings(workers=1), say, install=False, drain=RecordingDrain(cloud,
                                                                             fail="no SSH"))
    assert "nothing to drain" in say.text
    assert [instances.name_of(i) for i in cloud.live_instances()] == ["master", "worker-1"]


def test_the_task_flag_takes_seconds_and_says_what_is_wrong(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exit) as err:
        tasks.provision(Context(), workers=1, drain_timeout="soon", install=False)
    lines = str(err.value.message).splitlines()
    assert lines == ["error: --drain-timeout must be a number of seconds, 0 or more, not "
                     "'soon'", "hint: e.g. --drain-timeout 600"]
    assert "drain_timeout" in tasks.provision.help


# ---- the SSH side, against a scripted node ------------------------------------------------


class ScriptedNode:
    """A Remote whose worker /json/ answers come from a list (the last one repeats)."""

    def __init__(self, executors: list[list[str] | None],
                 decommission: str = "decommissioning") -> None:
        self.answers = iter(executors)
        self.last: list[str] | None = []
        self.decommission = decommission
        self.commands: list[str] = []
        self.inv = Inventory("demo", "eu-west-3", "ubuntu", ssh_address="private")

    def _state(self, node: Node) -> StepResult:
        self.last = next(self.answers, self.last)
        if self.last is None:
            return StepResult(node.name, "drain", True, 0, stdout="no-worker\n")
        if self.last == ["busy"]:  # the worker runs, its UI times out
            return StepResult(node.name, "drain", False, 20, exit_code=28)
        return StepResult(node.name, "drain", True, 0, stdout=json.dumps({"executors": [
            {"appid": e.split("/")[0], "id": int(e.split("/")[1])} for e in self.last]}))

    def run(self, node: Node, command: str, **kw: Any) -> StepResult:
        self.commands.append(command)
        if "pkill -PWR" in command:
            return StepResult(node.name, "drain", True, 0, stdout=self.decommission + "\n")
        if "pgrep" in command:
            return self._state(node)
        return StepResult(node.name, kw.get("step", ""), True, 0)


NODE = Node("worker", "i-0abc", "m6i.large", "10.0.0.6", name="worker-2")


def test_drainer_decommissions_then_waits_for_the_executors(monkeypatch) -> None:
    remote = ScriptedNode([["app-1/0", "app-2/3"], ["app-1/0"], []])
    said: list[str] = []
    shrink.Drainer(remote, said.append, timeout_s=60, poll_s=0)(remote.inv, [NODE])  # type: ignore[arg-type]
    assert "pkill -PWR" not in remote.commands[0] and "pkill -PWR" in remote.commands[1]
    assert f"http://{NODE.private_ip}:8081/json/" in remote.commands[0]
    assert "stop spark-worker" in remote.commands[-1]
    text = "\n".join(said)
    assert "worker-2: decommissioned: no new executors go there; waiting for 2 executor(s) " \
        "of app-1, app-2" in text
    assert "worker-2: drained in" in text and "worker-2: Spark worker stopped" in text


def test_drainer_gives_up_at_the_deadline_and_stops_nothing() -> None:
    remote = ScriptedNode([["app-7/1"]])
    with pytest.raises(UserError) as err:
        shrink.Drainer(remote, lambda _: None, timeout_s=0.05, poll_s=0.01).__call__(
            remote.inv, [NODE])  # type: ignore[arg-type]
    assert err.value.message.startswith("worker-2 still runs 1 executor(s) of app-7 after 0s")
    assert "nothing was terminated" in err.value.message
    assert "--drain-timeout 0" in err.value.hint
    assert not any("stop spark-worker" in c for c in remote.commands)


def test_drainer_waits_out_applications_where_decommission_is_off() -> None:
    remote = ScriptedNode([["app-1/0"], []], decommission="no-decommission")
    said: list[str] = []
    shrink.Drainer(remote, said.append, timeout_s=60, poll_s=0)(remote.inv, [NODE])  # type: ignore[arg-type]
    assert "predates decommission" in said[0] and "to end with their applications" in said[0]


def test_the_decommission_command_signals_the_worker_and_its_executors() -> None:
    cmd = shrink.decommission_command()
    assert "pkill -PWR -u spark -f 'org\\.apache\\.spark\\.deploy\\.worker\\.Worker'" in cmd
    executors = "'org\\.apache\\.spark\\.executor\\.CoarseGrainedExecutorBackend'"
    assert f"pkill -PWR -u spark -f {executors}" in cmd
    assert "'^spark\\.decommission\\.enabled[[:space:]]+true' /opt/spark/conf/" in cmd


def test_a_worker_whose_ui_does_not_answer_is_never_taken_for_an_idle_one() -> None:
    remote = ScriptedNode([["busy"], ["busy"], ["app-3/0"], []])
    said: list[str] = []
    shrink.Drainer(remote, said.append, timeout_s=60, poll_s=0)(remote.inv, [NODE])  # type: ignore[arg-type]
    assert "pkill -PWR" in remote.commands[1], "decommissioned although the UI was silent"
    assert sum("pgrep" in c for c in remote.commands) == 4, "polled until it listed none"
    assert "its UI did not answer" in said[0]
    assert "waiting for its executors (its UI has not answered yet)" in said[1]


def test_no_worker_jvm_means_nothing_to_drain_but_the_service_is_still_stopped() -> None:
    remote = ScriptedNode([None])
    said: list[str] = []
    shrink.Drainer(remote, said.append, timeout_s=60, poll_s=0)(remote.inv, [NODE])  # type: ignore[arg-type]
    assert not any("pkill -PWR" in c for c in remote.commands)
    assert said[0] == "worker-2: no Spark worker runs there: nothing to drain"
    assert "stop spark-worker" in remote.commands[-1]
