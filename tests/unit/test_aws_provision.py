"""provision -> status -> teardown against moto: what exists after each, by the cluster's tag."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError

from sparkfab import inventory
from sparkfab.aws import instances
from sparkfab.aws.session import AwsSession
from sparkfab.aws.status import cluster_status, format_status
from sparkfab.errors import UserError
from sparkfab.provision import provision, teardown, teardown_plan

NOTHING = {"instances": [], "security_groups": [], "key_pairs": [], "roles": [], "profiles": []}

if TYPE_CHECKING:
    from aws_fixtures import Cloud, Lines

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(120)  # moto in-process: a hang is a bug


def _teardown(cloud: Cloud, **flags: object) -> Lines:
    say = cloud.lines()
    aws, plan = teardown_plan(cloud.settings(**flags), delete_bucket=False)
    teardown(aws, plan, say)
    return say


def test_provision_status_teardown_leaves_nothing_tagged(cloud: Cloud) -> None:
    say = cloud.lines()
    result = provision(cloud.settings(), say, install=False)

    inv = inventory.load(cloud.cluster)
    assert inv is not None and inv == result.inventory
    path = inventory.path_for(cloud.cluster)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [n.name for n in inv.nodes] == ["master", "worker-1", "worker-2"]
    assert inv.region == cloud.region and inv.ssh_user == "admin"
    assert inv.security_group_id and inv.instance_profile and inv.key_name and inv.bucket
    assert all(n.private_ip and n.public_ip and n.launched_at for n in inv.nodes)
    assert len(inv.spark_secret) >= 40
    assert {i["InstanceId"] for i in cloud.live_instances()} == {n.instance_id for n in inv.nodes}
    assert all(i["State"]["Name"] == "running" for i in cloud.live_instances())

    st = cluster_status(AwsSession(cloud.settings()))
    table = format_status(st)
    for node in inv.nodes:
        assert node.instance_id in table and node.private_ip in table
    assert [n.state for n in st.nodes] == ["running"] * 3
    assert st.hourly > 0

    say = _teardown(cloud)
    assert cloud.leftovers() == NOTHING
    assert inv.bucket in cloud.buckets(), "the bucket is kept without --delete-bucket"
    assert inventory.load(cloud.cluster) is None
    assert "kept" in say.text

    again = _teardown(cloud)  # harmless the second time
    assert cloud.leftovers() == NOTHING
    assert "terminating" not in again.text


def test_provisioning_twice_creates_nothing_new(cloud: Cloud) -> None:
    first = provision(cloud.settings(), cloud.lines(), install=False)
    before = cloud.leftovers()
    say = cloud.lines()
    second = provision(cloud.settings(), say, install=False)

    assert second.created == []
    assert "nothing new" in say.text
    assert cloud.leftovers() == before
    assert len(cloud.buckets()) == 1
    assert second.inventory.spark_secret == first.inventory.spark_secret
    assert second.inventory.created_at == first.inventory.created_at


def _fail_on_launch(monkeypatch: pytest.MonkeyPatch, role: str) -> None:
    real = instances._run

    def run(ec2, settings, spec, *args, **kwargs):
        if spec.role == role:
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity",
                                         "Message": "no capacity"}}, "RunInstances")
        return real(ec2, settings, spec, *args, **kwargs)

    monkeypatch.setattr(instances, "_run", run)


def test_teardown_after_a_half_way_failure_leaves_nothing(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on_launch(monkeypatch, "master")
    with pytest.raises(UserError) as err:
        provision(cloud.settings(), cloud.lines(), install=False)
    assert "capacity" in err.value.message and err.value.hint
    made = cloud.leftovers()
    assert made["security_groups"] and made["key_pairs"] and made["roles"] and made["profiles"]
    assert inventory.load(cloud.cluster) is None, "no inventory: teardown must find things by tag"

    _teardown(cloud)
    assert cloud.leftovers() == NOTHING


def test_a_second_run_completes_a_half_way_cluster(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on_launch(monkeypatch, "worker")
    with pytest.raises(UserError):
        provision(cloud.settings(), cloud.lines(), install=False)
    assert [instances.name_of(i) for i in cloud.live_instances()] == ["master"]
    monkeypatch.undo()  # the launch works again; keep the test environment though
    monkeypatch.setattr(instances, "WAIT_DELAY_S", 0)
    monkeypatch.setattr(inventory, "INVENTORY_DIR", cloud.home / "inventory")

    say = cloud.lines()
    result = provision(cloud.settings(), say, install=False)
    names = sorted(instances.name_of(i) for i in cloud.live_instances())
    assert names == ["master", "worker-1", "worker-2"]
    assert result.created == ["2 instance(s)"]
    assert "master i-" in say.text and "exists" in say.text


def test_spot_workers_and_a_smaller_on_demand_master(cloud: Cloud) -> None:
    provision(cloud.settings(spot=True, master_instance_type="t3.large",
                             worker_instance_type="c6i.xlarge"), cloud.lines(), install=False)
    by_name = {instances.name_of(i): i for i in cloud.live_instances()}
    assert by_name["master"]["InstanceType"] == "t3.large"
    assert "InstanceLifecycle" not in by_name["master"]
    for name in ("worker-1", "worker-2"):
        assert by_name[name]["InstanceType"] == "c6i.xlarge"
        assert by_name[name]["InstanceLifecycle"] == "spot"
    inv = inventory.load(cloud.cluster)
    assert [n.lifecycle for n in inv.nodes] == ["on-demand", "spot", "spot"]


def test_status_costs_follow_the_price_table(cloud: Cloud) -> None:
    from sparkfab.aws.pricing import price_table

    provision(cloud.settings(workers=1, master_instance_type="t3.medium",
                             worker_instance_type="m6i.large"), cloud.lines(), install=False)
    launch = max(i["LaunchTime"] for i in cloud.live_instances())
    st = cluster_status(AwsSession(cloud.settings()), now=launch + timedelta(hours=2))
    table = price_table()
    expect = table.on_demand(cloud.region, "t3.medium") + table.on_demand(cloud.region, "m6i.large")
    assert st.hourly == pytest.approx(expect)
    assert st.so_far == pytest.approx(2 * expect, rel=1e-3)
    assert f"{expect:.4f}" in format_status(st)


def test_status_of_no_cluster_says_so(cloud: Cloud) -> None:
    text = format_status(cluster_status(AwsSession(cloud.settings(cluster="ghost"))))
    assert "no instances" in text and "ghost" in text


def test_ssh_rule_follows_a_new_operator_address_and_drift_is_repaired(cloud: Cloud) -> None:
    inv = provision(cloud.settings(), cloud.lines(), install=False).inventory
    # Someone opens the UI to the world by hand:
    cloud.ec2.authorize_security_group_ingress(GroupId=inv.security_group_id, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    say = cloud.lines()
    provision(cloud.settings(operator_cidr="198.51.100.9/32"), say, install=False)
    group = cloud.ec2.describe_security_groups(GroupIds=[inv.security_group_id])
    cidrs = {r["CidrIp"] for p in group["SecurityGroups"][0]["IpPermissions"]
             for r in p.get("IpRanges", [])}
    assert cidrs == {"198.51.100.9/32"}
    assert "0.0.0.0/0" in say.text and "revoked" in say.text
