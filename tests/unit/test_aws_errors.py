"""The errors a user meets: one line and a hint, and nothing made (or asked) before them."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError, NoCredentialsError

from sparkfab import inventory
from sparkfab.aws import session as session_mod
from sparkfab.aws.session import AwsSession, translate
from sparkfab.config import Settings
from sparkfab.errors import UserError
from sparkfab.provision import provision, teardown_plan

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
# A wrong turn into real SSH or waiting must fail fast, never hang the suite.
pytestmark = pytest.mark.timeout(120)


def _client_error(code: str, message: str = "m") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "RunInstances")


def test_a_non_eu_region_is_refused_before_any_api_call(
        aws_env, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(BaseClient, "_make_api_call",
                        lambda self, op, params: calls.append(op))
    monkeypatch.setattr(boto3, "Session", lambda *a, **k: calls.append("Session"))
    session_mod.forget_sessions()
    # Even settings built around validation (a bug elsewhere) cannot reach AWS:
    rogue = Settings(cluster="demo", region="us-east-1", operator_cidr="203.0.113.7/32",
                     public_key_path=str(aws_env / "id_ed25519.pub"))
    for attempt in (lambda: AwsSession(rogue),
                    lambda: provision(rogue, print, install=False),
                    lambda: teardown_plan(rogue, delete_bucket=False)):
        with pytest.raises(UserError) as err:
            attempt()
        assert "not an EU region" in err.value.message and "eu-west-1" in err.value.hint
    assert calls == []


def test_no_credentials_is_one_line_with_a_hint(aws_env, monkeypatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    session_mod.forget_sessions()
    settings = Settings(cluster="demo", region="eu-west-3")
    with pytest.raises(UserError) as err:
        AwsSession(settings).account_id  # noqa: B018 - the property makes the first call
    assert err.value.message.startswith("no AWS credentials found")
    assert "aws sso login" in err.value.hint


@pytest.mark.parametrize(("error", "words"), [
    (NoCredentialsError(), "no AWS credentials"),
    (_client_error("ExpiredToken"), "expired"),
    (_client_error("InstanceLimitExceeded"), "quota"),
    (_client_error("VcpuLimitExceeded"), "quota"),
    (_client_error("InsufficientInstanceCapacity"), "capacity"),
    (_client_error("InvalidAMIID.NotFound"), "AMI was not found"),
    (_client_error("UnauthorizedOperation"), "denied"),
    (_client_error("AuthFailure"), "rejected the credentials"),
])
def test_aws_errors_become_user_errors(error: Exception, words: str) -> None:
    err = translate(error, "eu-west-1", "launching instances")
    assert err is not None and words in err.message and err.hint
    assert "\n" not in err.message


def test_quota_error_at_launch_reaches_the_user_as_such(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparkfab.aws import instances

    def refuse(ec2, *args, **kwargs):
        raise _client_error("VcpuLimitExceeded", "You have requested more vCPU capacity")

    monkeypatch.setattr(instances, "_run_one", refuse)
    with pytest.raises(UserError) as err:
        provision(cloud.settings(), cloud.lines(), install=False)
    assert "quota" in err.value.message and "Service Quotas" in err.value.hint
    assert "launching instances" in err.value.message


@pytest.mark.parametrize("kind", ["security group", "key pair", "role"])
def test_a_name_clash_with_something_not_ours_is_refused(cloud: Cloud, kind: str) -> None:
    if kind == "security group":
        vpc = cloud.ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
        cloud.ec2.create_security_group(GroupName="sparkfab-demo", Description="x", VpcId=vpc)
    elif kind == "key pair":
        cloud.ec2.create_key_pair(KeyName="sparkfab-demo")
    else:
        cloud.iam.create_role(RoleName="sparkfab-demo-node", AssumeRolePolicyDocument="{}")
    with pytest.raises(UserError) as err:
        provision(cloud.settings(), cloud.lines(), install=False)
    assert "not created by sparkfab" in err.value.message
    assert "another cluster name" in err.value.hint
    assert cloud.live_instances() == []


def test_an_ami_that_does_not_exist_is_named(cloud: Cloud) -> None:
    with pytest.raises(UserError) as err:
        provision(cloud.settings(ami="ami-0123456789abcdef0"), cloud.lines(), install=False)
    assert "ami-0123456789abcdef0" in err.value.message and "region" in err.value.hint
    with pytest.raises(UserError) as err:
        provision(cloud.settings(ami_ssm_parameter="/nope/ami-id"), cloud.lines(),
                  install=False)
    assert "/nope/ami-id" in err.value.message
    assert cloud.live_instances() == []


def test_a_missing_public_key_fails_before_anything_is_made(cloud: Cloud) -> None:
    with pytest.raises(UserError) as err:
        provision(cloud.settings(public_key_path=str(cloud.home / "nope.pub")),
                  cloud.lines(), install=False)
    assert "does not exist" in err.value.message and "ssh-keygen" in err.value.hint
    assert cloud.buckets() == [] and cloud.sparkfab_roles() == []


def test_a_private_key_given_as_public_is_refused(cloud: Cloud) -> None:
    key = cloud.home / "id_rsa"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn==\n"
                   "-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(UserError, match="private key"):
        provision(cloud.settings(public_key_path=str(key)), cloud.lines(), install=False)


def test_without_the_install_module_provision_says_so(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("sparkfab.install", "sparkfab.bringup"):  # imports fail as if absent
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(UserError) as err:
        provision(cloud.settings(), cloud.lines(), install=True)
    assert "sparkfab.install" in err.value.message and "--no-install" in err.value.hint
    assert inventory.load(cloud.cluster) is not None, "AWS part done, inventory written"


def test_install_is_called_with_the_inventory_and_settings(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    fake = types.ModuleType("sparkfab.bringup")
    fake.bring_up = lambda inv, settings, say: seen.append((inv, settings))  # type: ignore
    monkeypatch.setitem(sys.modules, "sparkfab.bringup", fake)
    settings = cloud.settings()
    result = provision(settings, cloud.lines(), install=True)
    assert seen == [(result.inventory, settings)]
