"""What provision builds, checked the way a security review would: rules, policy, bucket,
instance settings and the user data's shell."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sparkfab.aws import instances, storage
from sparkfab.aws.iam import bucket_policy
from sparkfab.config import Settings
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER
from sparkfab.provision import provision, teardown, teardown_plan

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(120)  # moto in-process: a hang is a bug


def test_security_group_admits_ssh_from_the_operator_and_members_only(cloud: Cloud) -> None:
    inv = provision(cloud.settings(), cloud.lines(), install=False).inventory
    group = cloud.ec2.describe_security_groups(GroupIds=[inv.security_group_id])
    perms = group["SecurityGroups"][0]["IpPermissions"]
    sources = sorted(
        (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), src)
        for p in perms
        for src in [r["CidrIp"] for r in p.get("IpRanges", [])]
        + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
        + [r["GroupId"] for r in p.get("UserIdGroupPairs", [])]
    )
    assert sources == sorted([("tcp", 22, 22, cloud.operator_cidr),
                              ("-1", None, None, inv.security_group_id)])
    # Not one world-open ingress anywhere in the account's groups of this cluster:
    for g in cloud.tagged_groups():
        for p in g["IpPermissions"]:
            assert all(r["CidrIp"] != "0.0.0.0/0" for r in p.get("IpRanges", []))
            assert all(r["CidrIpv6"] != "::/0" for r in p.get("Ipv6Ranges", []))


def test_iam_policy_names_only_the_cluster_bucket(cloud: Cloud) -> None:
    inv = provision(cloud.settings(bucket="my-data-eu"), cloud.lines(), install=False).inventory
    doc = cloud.iam.get_role_policy(RoleName=inv.role_name,
                                    PolicyName=inv.policy_name)["PolicyDocument"]
    allows = [s for s in doc["Statement"] if s["Effect"] == "Allow"]
    resources = [r for s in allows for r in
                 ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    assert sorted(resources) == ["arn:aws:s3:::my-data-eu", "arn:aws:s3:::my-data-eu/*"]
    actions = [a for s in allows for a in s["Action"]]
    assert all(a.startswith("s3:") and "*" not in a for a in actions)
    # The one Deny: the staged artifacts (tests/unit/test_node_role_access.py).
    assert [s["Resource"] for s in doc["Statement"] if s["Effect"] != "Allow"] == [
        "arn:aws:s3:::my-data-eu/sparkfab/artifacts/*"]
    assert cloud.iam.list_attached_role_policies(RoleName=inv.role_name)["AttachedPolicies"] == []
    profile = cloud.iam.get_instance_profile(InstanceProfileName=inv.instance_profile)
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == [inv.role_name]
    # The nodes get role credentials from IMDS: no IAM user, no access key exists.
    assert cloud.iam.list_users()["Users"] == []


def test_policy_template_escapes_the_bucket_name() -> None:
    doc = bucket_policy('a"b')  # never a valid bucket; proves the JSON stays well-formed
    assert doc["Statement"][0]["Resource"] == 'arn:aws:s3:::a"b'


def test_bucket_is_private_encrypted_in_the_region_and_optionally_versioned(
        cloud: Cloud) -> None:
    inv = provision(cloud.settings(bucket_versioning=True), cloud.lines(), install=False).inventory
    s3 = cloud.s3
    assert storage.bucket_region(s3, inv.bucket) == cloud.region
    block = s3.get_public_access_block(Bucket=inv.bucket)["PublicAccessBlockConfiguration"]
    assert block == storage.PUBLIC_ACCESS_BLOCK and all(block.values())
    rules = s3.get_bucket_encryption(Bucket=inv.bucket)[
        "ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_bucket_versioning(Bucket=inv.bucket)["Status"] == "Enabled"
    assert inv.bucket_created


def test_a_users_existing_bucket_is_reused_and_never_deleted(cloud: Cloud) -> None:
    cloud.s3.create_bucket(Bucket="users-own-data",
                           CreateBucketConfiguration={"LocationConstraint": cloud.region})
    cloud.s3.put_object(Bucket="users-own-data", Key="images/cat.jpg", Body=b"x")
    say = cloud.lines()
    inv = provision(cloud.settings(bucket="users-own-data"), say, install=False).inventory
    assert not inv.bucket_created and "reused" in say.text

    aws, plan = teardown_plan(cloud.settings(bucket="users-own-data"), delete_bucket=True)
    assert plan.bucket is None and plan.kept_bucket == "users-own-data"
    teardown(aws, plan, cloud.lines())
    assert "users-own-data" in cloud.buckets()
    assert cloud.s3.get_object(Bucket="users-own-data", Key="images/cat.jpg")["Body"].read()


def test_delete_bucket_removes_a_bucket_sparkfab_made_with_its_objects(cloud: Cloud) -> None:
    inv = provision(cloud.settings(bucket_versioning=True), cloud.lines(), install=False).inventory
    for n in range(3):
        cloud.s3.put_object(Bucket=inv.bucket, Key=f"out/part-{n}", Body=b"v1")
        cloud.s3.put_object(Bucket=inv.bucket, Key=f"out/part-{n}", Body=b"v2")
    aws, plan = teardown_plan(cloud.settings(), delete_bucket=True)
    assert plan.bucket == inv.bucket
    teardown(aws, plan, cloud.lines())
    assert inv.bucket not in cloud.buckets()


def test_a_bucket_in_another_region_is_refused(cloud: Cloud) -> None:
    import boto3

    boto3.client("s3", "eu-north-1").create_bucket(Bucket="far-away-data",
                           CreateBucketConfiguration={"LocationConstraint": "eu-north-1"})
    from sparkfab.errors import UserError

    with pytest.raises(UserError, match="eu-north-1"):
        provision(cloud.settings(bucket="far-away-data"), cloud.lines(), install=False)


def test_every_instance_is_hardened(cloud: Cloud) -> None:
    settings = cloud.settings(root_volume_gb=42)
    inv = provision(settings, cloud.lines(), install=False).inventory
    volumes = {v["VolumeId"]: v for v in cloud.ec2.describe_volumes()["Volumes"]}
    for inst in cloud.live_instances():
        iid = inst["InstanceId"]
        assert inst["MetadataOptions"]["HttpTokens"] == "required", "IMDSv2 only"
        assert inst["KeyName"] == inv.key_name
        assert inst["IamInstanceProfile"]["Arn"].endswith(f"/{inv.instance_profile}")
        assert [g["GroupId"] for g in inst["SecurityGroups"]] == [inv.security_group_id]
        shutdown = cloud.ec2.describe_instance_attribute(
            InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
        assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        root = [m for m in inst["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sda1"]
        vol = volumes[root[0]["Ebs"]["VolumeId"]]
        assert (vol["VolumeType"], vol["Encrypted"], vol["Size"]) == ("gp3", True, 42)
        data = cloud.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        script = base64.b64decode(data["UserData"]["Value"]).decode()
        assert "shutdown -h now" in script
        assert f"+ {settings.max_lifetime_hours * 3600} ))" in script
        assert inst["ImageId"] == cloud.ami
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["sparkfab:cluster"] == "demo" and tags["created-by"] == "sparkfab"


def test_workers_watch_their_master_and_the_master_watches_nobody() -> None:
    settings = Settings(cluster="demo", region="eu-west-3")
    master = instances.user_data(settings, ROLE_MASTER, "10.0.0.4")
    worker = instances.user_data(settings, ROLE_WORKER, "10.0.0.4")
    # The address is an argument of the probe, never part of its code.
    assert "master_ip=10.0.0.4\n" in worker and '"/dev/tcp/$1/22"\' _ "$master_ip"' in worker
    assert "/dev/tcp/" not in master


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("role", [ROLE_MASTER, ROLE_WORKER])
def test_user_data_passes_shellcheck(role: str, tmp_path: Path) -> None:
    script = instances.user_data(Settings(cluster="demo", region="eu-west-3"), role, "10.0.0.4")
    # The outer script, and the guard it installs (a quoted heredoc shellcheck cannot see).
    inner = re.search(r"<<'SCRIPT'\n(.*?)\nSCRIPT\n", script, re.S)
    assert inner is not None
    for name, text in (("user-data.sh", script), ("sparkfab-lifetime", inner.group(1))):
        path = tmp_path / name
        path.write_text(text)
        out = subprocess.run(["shellcheck", "--shell=bash", str(path)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


def _tls_statements(s3, bucket: str) -> list[dict]:
    import json

    try:
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except s3.exceptions.ClientError:
        return []
    return [s for s in policy["Statement"] if "aws:SecureTransport" in json.dumps(s)]


def test_a_bucket_sparkfab_makes_refuses_requests_without_tls(cloud: Cloud) -> None:
    inv = provision(cloud.settings(), cloud.lines(), install=False).inventory
    arn = f"arn:aws:s3:::{inv.bucket}"
    assert _tls_statements(cloud.s3, inv.bucket) == [{
        "Sid": "DenyRequestsWithoutTLS", "Effect": "Deny", "Principal": "*",
        "Action": "s3:*", "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]
    # A bucket made before this rule gets it on the next run, beside what else it says.
    import json

    other = {"Sid": "TheUsersOwn", "Effect": "Deny", "Principal": "*",
             "Action": "s3:DeleteBucket", "Resource": arn}
    cloud.s3.put_bucket_policy(Bucket=inv.bucket, Policy=json.dumps(
        {"Version": "2012-10-17", "Statement": [other]}))
    say = cloud.lines()
    provision(cloud.settings(), say, install=False)
    policy = json.loads(cloud.s3.get_bucket_policy(Bucket=inv.bucket)["Policy"])
    assert policy["Statement"][0] == other and len(_tls_statements(cloud.s3, inv.bucket)) == 1
    assert "without TLS" in say.text
    say = cloud.lines()
    provision(cloud.settings(), say, install=False)
    assert "without TLS" not in say.text  # already there: nothing rewritten


def test_a_users_bucket_is_checked_and_left_as_it_is(cloud: Cloud) -> None:
    cloud.s3.create_bucket(Bucket="users-bare-bucket",
                           CreateBucketConfiguration={"LocationConstraint": cloud.region})
    say = cloud.lines()
    provision(cloud.settings(bucket="users-bare-bucket"), say, install=False)
    warnings = [line for line in say.text.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3, say.text
    assert all("users-bare-bucket" in w for w in warnings)
    for words in ("public access", "default encryption", "without TLS"):
        assert sum(words in w for w in warnings) == 1, words
    # Reported, never changed: it is the user's bucket.
    assert _tls_statements(cloud.s3, "users-bare-bucket") == []
    with pytest.raises(cloud.s3.exceptions.ClientError):
        cloud.s3.get_public_access_block(Bucket="users-bare-bucket")

    cloud.s3.create_bucket(Bucket="users-tidy-bucket",
                           CreateBucketConfiguration={"LocationConstraint": cloud.region})
    storage.harden(cloud.s3, "users-tidy-bucket")
    say = cloud.lines()
    provision(cloud.settings(cluster="tidy", bucket="users-tidy-bucket"), say, install=False)
    assert "warning: " not in say.text
