"""Shared pieces of the AWS unit tests: moto in-process, fast waits, no network at all.

Test modules load them with `pytest_plugins = ["aws_fixtures"]` and reach the constants
through the `cloud` fixture (importing this module first would defeat pytest's assertion
rewriting here).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.s3 import models as s3_models

from sparkfab import inventory
from sparkfab.aws import instances, network, session, teardown
from sparkfab.aws import tags as T
from sparkfab.config import Settings, load_settings

REGION = "eu-west-3"
CLUSTER = "demo"
OPERATOR_CIDR = "203.0.113.7/32"
AMI_PARAMETER = "/sparkfab-test/ubuntu-24.04/ami-id"  # moto reserves the /aws/ namespace
# A public key (not a secret): moto checks the format of what is imported.
PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID1nY5t16sPt16+c+m1kpHt3Ix55JJy26YDgbs4pH"
              "MVF operator@laptop")


def _no_lookup() -> str:
    raise AssertionError("the public IP lookup must never run in tests")


def _bucket_permission_over_tls(self: Any, action: str, resource: str) -> Any:
    """moto's bucket-policy check for a request over TLS (in-process boto3 calls go to
    https:// endpoints). moto evaluates no `Bool` condition and answers DENIED for any
    statement whose condition it cannot match, so a sparkfab bucket's Deny of plain-HTTP
    requests would deny every request; as on AWS, such a statement does not apply here."""
    import json

    from moto.iam.access_control import IAMPolicy, PermissionResult

    if self.policy is None:
        return PermissionResult.NEUTRAL
    doc = json.loads(self.policy.decode())
    statements = doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]
    doc["Statement"] = [
        st for st in statements
        if str(st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")).lower()
        != "false"
    ]
    return IAMPolicy(json.dumps(doc)).is_action_permitted(action, resource)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: fake credentials, no real AWS config, zero waits, cwd=tmp."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "SPARKFAB_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # moto's ~1200 default AMIs cost seconds per test; the tests register their own.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(s3_models.FakeBucket, "get_permission", _bucket_permission_over_tls)
    monkeypatch.setattr(inventory, "INVENTORY_DIR", tmp_path / "inventory")
    monkeypatch.setattr(network, "lookup_public_ip", _no_lookup)
    monkeypatch.setattr(instances, "WAIT_DELAY_S", 0)
    monkeypatch.setattr(instances, "PROFILE_RETRY_DELAY_S", 0)
    monkeypatch.setattr(teardown, "SG_RETRY_DELAY_S", 0)
    session.forget_sessions()
    (tmp_path / "id_ed25519.pub").write_text(PUBLIC_KEY + "\n")
    yield tmp_path
    session.forget_sessions()


@dataclass
class Cloud:
    """moto's AWS, with the clients a test asserts through."""

    ec2: Any
    iam: Any
    s3: Any
    ssm: Any
    ami: str
    home: Path
    region: str = REGION
    cluster: str = CLUSTER
    operator_cidr: str = OPERATOR_CIDR

    @staticmethod
    def lines() -> Lines:
        return Lines()

    def settings(self, **flags: Any) -> Settings:
        base: dict[str, Any] = {
            "cluster": CLUSTER, "region": REGION, "workers": 2,
            "operator_cidr": OPERATOR_CIDR, "ami_ssm_parameter": AMI_PARAMETER,
            "public_key_path": str(self.home / "id_ed25519.pub"),
        }
        return load_settings({**base, **flags}, env={}, path=None)

    # What a user would look at in the console, by the cluster's tag:
    def tagged_instances(self, cluster: str = CLUSTER) -> list[dict[str, Any]]:
        res = self.ec2.describe_instances(Filters=T.ec2_filter(cluster))["Reservations"]
        return [i for r in res for i in r["Instances"]]

    def live_instances(self, cluster: str = CLUSTER) -> list[dict[str, Any]]:
        return [i for i in self.tagged_instances(cluster) if i["State"]["Name"] != "terminated"]

    def tagged_groups(self, cluster: str = CLUSTER) -> list[dict[str, Any]]:
        return self.ec2.describe_security_groups(Filters=T.ec2_filter(cluster))["SecurityGroups"]

    def tagged_key_pairs(self, cluster: str = CLUSTER) -> list[dict[str, Any]]:
        return self.ec2.describe_key_pairs(Filters=T.ec2_filter(cluster))["KeyPairs"]

    def sparkfab_roles(self) -> list[str]:
        return [r["RoleName"] for r in self.iam.list_roles(PathPrefix="/sparkfab/")["Roles"]]

    def sparkfab_profiles(self) -> list[str]:
        return [p["InstanceProfileName"] for p in
                self.iam.list_instance_profiles(PathPrefix="/sparkfab/")["InstanceProfiles"]]

    def buckets(self) -> list[str]:
        return [b["Name"] for b in self.s3.list_buckets()["Buckets"]]

    def leftovers(self, cluster: str = CLUSTER) -> dict[str, list[Any]]:
        """Everything of the cluster that still exists (the bucket is kept on purpose)."""
        return {
            "instances": [i["InstanceId"] for i in self.live_instances(cluster)],
            "security_groups": [g["GroupId"] for g in self.tagged_groups(cluster)],
            "key_pairs": [k["KeyName"] for k in self.tagged_key_pairs(cluster)],
            "roles": self.sparkfab_roles(),
            "profiles": self.sparkfab_profiles(),
        }


@pytest.fixture
def cloud(aws_env: Path) -> Iterator[Cloud]:
    with mock_aws():
        ec2 = boto3.client("ec2", REGION)
        ssm = boto3.client("ssm", REGION)
        ami = ec2.register_image(Name="ubuntu-24.04-test", RootDeviceName="/dev/sda1",
                                 Architecture="x86_64")["ImageId"]
        ssm.put_parameter(Name=AMI_PARAMETER, Value=ami, Type="String")
        yield Cloud(ec2=ec2, iam=boto3.client("iam", REGION), s3=boto3.client("s3", REGION),
                    ssm=ssm, ami=ami, home=aws_env)


class Lines:
    """A `say` that keeps what was said."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str) -> None:
        self.lines.append(message)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
