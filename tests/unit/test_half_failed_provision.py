"""A provision that fails at the second worker, with the master and the first worker running.

The failure is AWS's own answer: moto's RunInstances raises InsufficientInstanceCapacity
for the instance named worker-2, every attempt (botocore's retries included), so the whole
boto3 path runs as it would against AWS. Then: the error says what is running and billing,
`fab teardown` terminates both instances and leaves nothing, and a second provision
completes the cluster without launching anything twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from invoke import Context
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.instances import InstanceBackend

import tasks
from sparkfab import inventory
from sparkfab.aws import instances
from sparkfab.errors import UserError
from sparkfab.provision import provision

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(120)  # moto in-process: a hang is a bug

NOTHING = {"instances": [], "security_groups": [], "key_pairs": [], "roles": [], "profiles": []}


class NoCapacityFor:
    """moto's RunInstances answers InsufficientInstanceCapacity for one node name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, node: str) -> None:
        self.node: str | None = node  # None: capacity is back
        self.refused = 0
        real = InstanceBackend.run_instances

        def run_instances(backend: Any, image_id: str, count: int, user_data: Any,
                          security_group_names: list[str], **kwargs: Any) -> Any:
            name = kwargs.get("tags", {}).get("instance", {}).get("Name", "")
            if self.node is not None and name.endswith(f":{self.node}"):
                self.refused += 1
                raise EC2ClientError("InsufficientInstanceCapacity",
                                     "We currently do not have sufficient capacity")
            return real(backend, image_id, count, user_data, security_group_names, **kwargs)

        monkeypatch.setattr(InstanceBackend, "run_instances", run_instances)


def _fail_at_second_worker(cloud: Cloud, monkeypatch: pytest.MonkeyPatch
                           ) -> tuple[UserError, NoCapacityFor]:
    refusal = NoCapacityFor(monkeypatch, "worker-2")
    with pytest.raises(UserError) as err:
        provision(cloud.settings(workers=2), cloud.lines(), install=False)
    assert refusal.refused >= 1
    running = {instances.name_of(i): i["State"]["Name"] for i in cloud.live_instances()}
    assert running == {"master": "running", "worker-1": "running"}
    return err.value, refusal


def test_the_error_names_what_runs_and_teardown_terminates_it(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error, _ = _fail_at_second_worker(cloud, monkeypatch)
    # One line a user can act on: what failed, what is left running (and billing), and both
    # ways out.
    assert "\n" not in error.message
    assert "InsufficientInstanceCapacity" in error.message
    ids = {instances.name_of(i): i["InstanceId"] for i in cloud.live_instances()}
    assert "2 instance(s) of cluster demo are running" in error.message
    for name, iid in ids.items():
        assert f"{name} {iid}" in error.message
    assert "`fab provision`" in error.hint and "`fab teardown`" in error.hint

    monkeypatch.setenv("SPARKFAB_REGION", cloud.region)
    tasks.teardown(Context(), cluster=cloud.cluster, yes=True)
    out = capsys.readouterr().out
    for iid in ids.values():
        assert f"instance {iid}" in out
    states = {i["InstanceId"]: i["State"]["Name"] for i in cloud.tagged_instances()}
    assert states == {iid: "terminated" for iid in ids.values()}
    assert cloud.leftovers() == NOTHING


def test_a_second_provision_completes_the_cluster_and_duplicates_nothing(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    _, refusal = _fail_at_second_worker(cloud, monkeypatch)
    first = {instances.name_of(i): i["InstanceId"] for i in cloud.live_instances()}
    refusal.node = None  # capacity is back

    say = cloud.lines()
    result = provision(cloud.settings(workers=2), say, install=False)
    every = cloud.tagged_instances()  # terminated ones too: a duplicate would show here
    names = sorted(instances.name_of(i) for i in every)
    assert names == ["master", "worker-1", "worker-2"]
    assert {i["State"]["Name"] for i in every} == {"running"}
    now = {instances.name_of(i): i["InstanceId"] for i in every}
    assert {k: now[k] for k in first} == first, "the running master and worker-1 are reused"
    assert result.created == ["1 instance(s)"]
    inv = inventory.load(cloud.cluster)
    assert [n.instance_id for n in inv.nodes] == [now["master"], now["worker-1"],
                                                 now["worker-2"]]
    assert len(inv.workers) == 2
