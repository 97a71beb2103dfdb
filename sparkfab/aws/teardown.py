"""Find everything a cluster left in AWS, by its tags (no inventory needed), and delete it.

Order matters: instances first (their network interfaces hold the security group and
their profile holds the role), then the group, the instance profile, the role with its
policy, the key pair, and the bucket only when asked and only if sparkfab created it.
Every step treats "already gone" as done, so a second run is harmless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from sparkfab.aws import iam as iam_mod
from sparkfab.aws import instances, keys, network, storage
from sparkfab.aws import tags as T
from sparkfab.aws.session import AwsSession, error_code
from sparkfab.errors import UserError

Say = Callable[[str], None]
# After termination, AWS releases the instances' network interfaces a little later; the
# group cannot be deleted until then.
SG_RETRY_DELAY_S = 5.0
SG_RETRIES = 24


@dataclass
class TeardownPlan:
    cluster: str
    region: str
    instances: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, state)
    security_groups: list[str] = field(default_factory=list)
    instance_profiles: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    key_pairs: list[str] = field(default_factory=list)
    bucket: str | None = None  # to delete (only with --delete-bucket and created by sparkfab)
    kept_bucket: str | None = None  # found, and kept
    kept_reason: str = ""

    @property
    def empty(self) -> bool:
        return not (self.instances or self.security_groups or self.instance_profiles
                    or self.roles or self.key_pairs or self.bucket)

    def lines(self) -> list[str]:
        out = [f"  instance {i} ({name}, {state})" for i, name, state in self.instances]
        out += [f"  security group {g}" for g in self.security_groups]
        out += [f"  instance profile {p}" for p in self.instance_profiles]
        out += [f"  IAM role {r} (and its inline policy)" for r in self.roles]
        out += [f"  key pair {k}" for k in self.key_pairs]
        if self.bucket:
            out.append(f"  bucket {self.bucket} AND EVERY OBJECT IN IT")
        return out


def _bucket_candidates(aws: AwsSession, bucket: str | None) -> list[str]:
    names = [bucket] if bucket else []
    default = storage.default_bucket_name(aws.settings.cluster, aws.account_id, aws.region)
    return [*names, default] if default not in names else names


def plan(aws: AwsSession, delete_bucket: bool, bucket: str | None = None) -> TeardownPlan:
    """What teardown would delete. `bucket`: the inventory's bucket, if there is one."""
    cluster = aws.settings.cluster
    ec2, iam, s3 = aws.client("ec2"), aws.client("iam"), aws.client("s3")
    p = TeardownPlan(cluster=cluster, region=aws.region)
    for inst in instances.find_instances(
            ec2, cluster, states=("pending", "running", "stopping", "stopped", "shutting-down")):
        p.instances.append((inst["InstanceId"], instances.name_of(inst) or "?",
                            inst["State"]["Name"]))
    p.security_groups = [g["GroupId"] for g in ec2.describe_security_groups(
        Filters=T.ec2_filter(cluster))["SecurityGroups"]]
    p.key_pairs = [k["KeyName"] for k in ec2.describe_key_pairs(
        Filters=T.ec2_filter(cluster))["KeyPairs"]]
    p.roles = iam_mod.find_roles(iam, cluster)
    p.instance_profiles = iam_mod.find_profiles(iam, cluster)

    for name in _bucket_candidates(aws, bucket or aws.settings.bucket):
        try:
            if not storage.exists(s3, name):
                continue
        except UserError:  # someone else's bucket: never ours to delete
            continue
        tags = storage.bucket_tags(s3, name)
        ours = T.is_ours(tags, cluster)
        others = iam_mod.clusters_using_bucket(iam, name, cluster) if ours and delete_bucket \
            else []
        if delete_bucket and ours and not others:
            p.bucket = name
        else:
            p.kept_bucket = name
            creator = tags.get(T.TAG_CLUSTER) if tags.get(T.TAG_CREATED_BY) == T.CREATED_BY \
                else None
            if others:
                p.kept_reason = (f"kept: cluster {', '.join(others)} uses it too (its node "
                                 "role may read and write it); never deleted while it exists")
            elif not ours:
                p.kept_reason = (f"created by sparkfab for cluster {creator}, not this one: "
                                 "not deleted here" if creator
                                 else "not created by sparkfab: never deleted")
            else:
                p.kept_reason = "kept (add --delete-bucket to delete it and its data)"
        break
    return p


def _delete_security_group(ec2: Any, group_id: str, say: Say) -> None:
    for attempt in range(SG_RETRIES + 1):
        try:
            network.delete_security_group(ec2, group_id)
            return
        except ClientError as exc:
            if error_code(exc) != "DependencyViolation" or attempt == SG_RETRIES:
                raise
            if attempt == 0:
                say(f"security group {group_id}: still in use, waiting for AWS to release it")
            time.sleep(SG_RETRY_DELAY_S)


def execute(aws: AwsSession, p: TeardownPlan, say: Say) -> None:
    ec2, iam, s3 = aws.client("ec2"), aws.client("iam"), aws.client("s3")
    instances.terminate(ec2, [i for i, _, _ in p.instances], say)
    for group_id in p.security_groups:
        _delete_security_group(ec2, group_id, say)
        say(f"security group {group_id}: deleted")
    for profile in p.instance_profiles:
        iam_mod.delete_profile(iam, profile)
        say(f"instance profile {profile}: deleted")
    for role in p.roles:
        iam_mod.delete_role(iam, role)
        say(f"IAM role {role}: deleted")
    for key in p.key_pairs:
        keys.delete_key_pair(ec2, key)
        say(f"key pair {key}: deleted")
    if p.bucket:
        n = storage.empty_and_delete(s3, p.bucket, say)
        say(f"bucket {p.bucket}: deleted ({n} object version(s))")
    if p.kept_bucket:
        say(f"bucket {p.kept_bucket}: {p.kept_reason}")
