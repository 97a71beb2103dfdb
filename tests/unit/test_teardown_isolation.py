"""Two clusters in one account: `fab teardown --cluster a` must not touch anything of `b`.

Both are provisioned into one moto account; `a` is torn down through the task (with
--delete-bucket, so the bucket path runs too). Every resource of `b` (instances and their
state, role and its policy, instance profile, key pair, security group and its rules,
bucket with its objects and tags, inventory) must read back exactly as before; then `b`
goes too and nothing of either cluster remains.

A bucket is shared when `b` was pointed at the one `a` created (`--bucket`): then it holds
`b`'s data, and `a`'s teardown must keep it even with --delete-bucket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from invoke import Context

import tasks
from sparkfab import inventory
from sparkfab.aws import iam as iam_mod
from sparkfab.aws import tags as T
from sparkfab.provision import provision

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(120)  # moto in-process: a hang is a bug


def _snapshot(cloud: Cloud, cluster: str) -> dict[str, Any]:
    """Everything of `cluster` a user could look at, by name and by tag, in a stable form."""
    inv = inventory.load(cluster)
    assert inv is not None
    names = iam_mod.names(cluster)
    instances = {i["InstanceId"]: (i["State"]["Name"], i["PrivateIpAddress"],
                                   T.as_dict(i.get("Tags")).get("Name"))
                 for i in cloud.tagged_instances(cluster)}
    groups = {g["GroupId"]: (g["GroupName"], sorted(str(p) for p in g["IpPermissions"]))
              for g in cloud.tagged_groups(cluster)}
    profile = cloud.iam.get_instance_profile(InstanceProfileName=names.profile)
    bucket = inv.bucket
    return {
        "instances": instances,
        "groups": groups,
        "key_pairs": sorted(k["KeyName"] for k in cloud.tagged_key_pairs(cluster)),
        "role": cloud.iam.get_role(RoleName=names.role)["Role"]["Arn"],
        "role_policy": cloud.iam.get_role_policy(
            RoleName=names.role, PolicyName=names.policy)["PolicyDocument"],
        "profile_roles": [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]],
        "bucket_tags": T.as_dict(cloud.s3.get_bucket_tagging(Bucket=bucket)["TagSet"]),
        "bucket_objects": sorted(o["Key"] for o in cloud.s3.list_objects_v2(
            Bucket=bucket).get("Contents", [])),
        "inventory": inv.to_dict(),
    }


def _teardown_task(cluster: str) -> None:
    """`fab teardown --cluster NAME --yes --delete-bucket`, through the task itself."""
    tasks.teardown(Context(), cluster=cluster, yes=True, delete_bucket=True)


@pytest.mark.parametrize("first, second", [("a", "b"), ("a", "a-b")],
                         ids=["a-and-b", "name-is-a-prefix-of-the-other"])
def test_teardown_of_one_cluster_leaves_the_other_untouched(
        cloud: Cloud, first: str, second: str, capsys: pytest.CaptureFixture[str]) -> None:
    for cluster in (first, second):
        provision(cloud.settings(cluster=cluster), cloud.lines(), install=False)
        bucket = inventory.load(cluster).bucket
        cloud.s3.put_object(Bucket=bucket, Key=f"images/{cluster}.jpg", Body=b"data")
    assert len(set(cloud.buckets())) == 2, "each cluster has a bucket of its own"
    before = _snapshot(cloud, second)
    assert len(before["instances"]) == 3 and len(before["groups"]) == 1
    assert {state for state, _, _ in before["instances"].values()} == {"running"}

    _teardown_task(first)
    out = capsys.readouterr().out
    assert f"cluster {first}: torn down" in out
    for resource in (*before["instances"], *before["groups"], *before["key_pairs"]):
        assert resource not in out, f"teardown of {first} planned {second}'s {resource}"

    assert _snapshot(cloud, second) == before
    assert cloud.live_instances(first) == []
    assert cloud.tagged_groups(first) == [] and cloud.tagged_key_pairs(first) == []
    assert sorted(cloud.sparkfab_roles()) == [iam_mod.names(second).role]
    assert sorted(cloud.sparkfab_profiles()) == [iam_mod.names(second).profile]
    assert cloud.buckets() == [before["inventory"]["bucket"]]
    assert inventory.load(first) is None

    _teardown_task(second)
    for cluster in (first, second):
        assert cloud.live_instances(cluster) == []
        assert cloud.tagged_groups(cluster) == [] and cloud.tagged_key_pairs(cluster) == []
        assert inventory.load(cluster) is None
    assert cloud.sparkfab_roles() == [] and cloud.sparkfab_profiles() == []
    assert cloud.buckets() == []


def test_a_bucket_another_cluster_uses_is_kept_by_delete_bucket(
        cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    provision(cloud.settings(cluster="a"), cloud.lines(), install=False)
    shared = inventory.load("a").bucket
    say = cloud.lines()
    provision(cloud.settings(cluster="b", bucket=shared), say, install=False)
    cloud.s3.put_object(Bucket=shared, Key="images/b.jpg", Body=b"b's data")
    before = _snapshot(cloud, "b")

    _teardown_task("a")
    out = capsys.readouterr().out
    assert "AND EVERY OBJECT IN IT" not in out
    assert f"bucket {shared}: kept: cluster b uses it too" in out
    assert _snapshot(cloud, "b") == before

    _teardown_task("b")
    out = capsys.readouterr().out
    assert f"bucket {shared}: created by sparkfab for cluster a, not this one" in out
    assert cloud.buckets() == [shared], "the data outlives both; sparkfab never deleted it"
    assert cloud.live_instances("b") == [] and cloud.sparkfab_roles() == []
    assert "created for cluster a: shared" in say.text, "b's provision said whose bucket"
