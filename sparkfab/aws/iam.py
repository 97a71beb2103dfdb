"""The nodes' IAM role and instance profile: S3 access to the cluster bucket only.

The nodes get temporary credentials from the instance metadata service (IMDSv2); no
access key is ever created, so none can leak. Roles and profiles live under the IAM path
`/sparkfab/` and carry the cluster tags, which is how teardown finds them with no inventory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from sparkfab.artifacts import STAGE_PREFIX
from sparkfab.aws import tags as T
from sparkfab.aws.session import error_code
from sparkfab.errors import UserError
from sparkfab.render import render

IAM_PATH = "/sparkfab/"
POLICY_TEMPLATE = "s3-policy.json"
ASSUME_ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}

Say = Callable[[str], None]


@dataclass(frozen=True)
class IamNames:
    role: str
    profile: str
    policy: str


def names(cluster: str) -> IamNames:
    base = f"sparkfab-{cluster}-node"
    return IamNames(role=base, profile=base, policy=f"sparkfab-{cluster}-s3")


def bucket_policy(bucket: str) -> dict[str, Any]:
    """The nodes' inline policy, rendered from templates/s3-policy.json.j2."""
    return json.loads(render(POLICY_TEMPLATE, bucket=bucket, artifacts_prefix=STAGE_PREFIX))


def _missing(exc: ClientError) -> bool:
    return error_code(exc) == "NoSuchEntity"


def _clash(kind: str, name: str, cluster: str) -> UserError:
    return UserError(f"an IAM {kind} named {name} exists and was not created by sparkfab for "
                     f"cluster {cluster}",
                     hint=f"choose another cluster name, or delete that {kind}")


def ensure_role(iam: Any, cluster: str, bucket: str, extra_tags: dict[str, str],
                say: Say) -> tuple[IamNames, bool]:
    """Role + inline bucket policy + instance profile holding the role; True if any created."""
    n = names(cluster)
    tags = T.as_list(T.cluster_tags(cluster, extra_tags))
    created = False
    try:
        iam.get_role(RoleName=n.role)
        if not T.is_ours(iam.list_role_tags(RoleName=n.role)["Tags"], cluster):
            raise _clash("role", n.role, cluster)
        say(f"IAM role {n.role}: exists")
    except ClientError as exc:
        if not _missing(exc):
            raise
        iam.create_role(
            RoleName=n.role,
            Path=IAM_PATH,
            AssumeRolePolicyDocument=json.dumps(ASSUME_ROLE_POLICY),
            Description=f"sparkfab cluster {cluster}: nodes read/write s3://{bucket} only",
            Tags=tags,
        )
        created = True
        say(f"IAM role {n.role}: created")
    # Always (re)written: it follows the bucket setting, and putting it is idempotent.
    iam.put_role_policy(RoleName=n.role, PolicyName=n.policy,
                        PolicyDocument=json.dumps(bucket_policy(bucket)))

    try:
        profile = iam.get_instance_profile(InstanceProfileName=n.profile)["InstanceProfile"]
        if not T.is_ours(profile.get("Tags"), cluster) and profile.get("Path") != IAM_PATH:
            raise _clash("instance profile", n.profile, cluster)
        say(f"instance profile {n.profile}: exists")
    except ClientError as exc:
        if not _missing(exc):
            raise
        profile = iam.create_instance_profile(
            InstanceProfileName=n.profile, Path=IAM_PATH, Tags=tags)["InstanceProfile"]
        created = True
        say(f"instance profile {n.profile}: created")
    if n.role not in {r["RoleName"] for r in profile.get("Roles", [])}:
        iam.add_role_to_instance_profile(InstanceProfileName=n.profile, RoleName=n.role)
    return n, created


def find_roles(iam: Any, cluster: str) -> list[str]:
    """Names of the cluster's roles, found by path and tag."""
    out = []
    for page in iam.get_paginator("list_roles").paginate(PathPrefix=IAM_PATH):
        for role in page["Roles"]:
            if T.is_ours(iam.list_role_tags(RoleName=role["RoleName"])["Tags"], cluster):
                out.append(role["RoleName"])
    return out


def find_profiles(iam: Any, cluster: str) -> list[str]:
    """Names of the cluster's instance profiles: tagged, or holding one of its roles."""
    roles = set(find_roles(iam, cluster))
    out = []
    for page in iam.get_paginator("list_instance_profiles").paginate(PathPrefix=IAM_PATH):
        for prof in page["InstanceProfiles"]:
            held = {r["RoleName"] for r in prof.get("Roles", [])}
            if T.is_ours(prof.get("Tags"), cluster) or held & roles:
                out.append(prof["InstanceProfileName"])
    return out


def _allows_bucket(document: Any, bucket: str) -> bool:
    """Whether a policy document allows anything on `bucket` or its objects."""
    arn = f"arn:aws:s3:::{bucket}"
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    for st in statements if isinstance(statements, list) else [statements]:
        if st.get("Effect") != "Allow":
            continue
        resources = st.get("Resource", [])
        for res in [resources] if isinstance(resources, str) else resources:
            if res == arn or res.startswith(arn + "/"):
                return True
    return False


def clusters_using_bucket(iam: Any, bucket: str, other_than: str) -> list[str]:
    """The other sparkfab clusters whose node role may use `bucket`: while one exists, the
    bucket is its data too, whichever cluster created it."""
    users = set()
    for page in iam.get_paginator("list_roles").paginate(PathPrefix=IAM_PATH):
        for role in page["Roles"]:
            name = role["RoleName"]
            tags = T.as_dict(iam.list_role_tags(RoleName=name)["Tags"])
            cluster = tags.get(T.TAG_CLUSTER)
            if not cluster or cluster == other_than or not T.is_ours(tags, cluster):
                continue
            for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                doc = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
                if isinstance(doc, str):
                    doc = json.loads(unquote(doc))
                if _allows_bucket(doc, bucket):
                    users.add(cluster)
    return sorted(users)


def delete_profile(iam: Any, name: str) -> None:
    try:
        prof = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        for role in prof.get("Roles", []):
            iam.remove_role_from_instance_profile(InstanceProfileName=name,
                                                  RoleName=role["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=name)
    except ClientError as exc:
        if not _missing(exc):
            raise


def delete_role(iam: Any, name: str) -> None:
    """The role with its inline policies (and any attached ones detached)."""
    try:
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        for att in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=name, PolicyArn=att["PolicyArn"])
        for prof in iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]:
            iam.remove_role_from_instance_profile(
                InstanceProfileName=prof["InstanceProfileName"], RoleName=name)
        iam.delete_role(RoleName=name)
    except ClientError as exc:
        if not _missing(exc):
            raise
