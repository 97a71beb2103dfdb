"""The operator's policy (sparkfab/aws/operator-policy.json), proved with moto's IAM
authorization on: a user holding exactly that policy runs every AWS command, and a user
lacking one permission the commands use gets a one-line error that names it.

The commands run as `fab` runs them (the tasks in tasks.py), signed with the user's own
access key, which lives only in this process's environment. Only SSH is replaced: run-job
talks to a scripted master.

Where moto differs from AWS, the policy is shown to moto in AWS's terms, and only there:
- moto names a few S3 requests by their API operation instead of their IAM action
  (`MOTO_S3_NAMES`); the policy's action allows moto's name too. None of those names is
  an IAM action, so on AWS the extra names would grant nothing.
- moto authorizes IAM calls on a role that does not exist yet, on instance profiles, and
  every SSM call against "*", which no scoped statement matches; here they are checked
  against the ARN AWS checks (sparkfab/localcloud/awsauth.py, which the booted local
  cloud's moto_server applies too), so the policy's scoping is tested too.
- moto never checks some actions at all (`UNCHECKED_BY_MOTO`): iam:PassRole on
  RunInstances, the Tag* implied by creating a tagged role or profile, and the ones whose
  requests moto files under another action.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from invoke import Context
from invoke.exceptions import Exit
from moto.core import disable_iam_authentication, enable_iam_authentication
from moto.iam.access_control import IAMRequestBase
from moto.iam.responses import IamResponse
from moto.ssm.responses import SimpleSystemManagerResponse

import tasks
from sparkfab import bringup, cluster, hostkeys, inventory, spark
from sparkfab.aws import iam, operator_policy, session
from sparkfab.aws.session import AwsSession, aws_errors
from sparkfab.config import load_settings
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER
from sparkfab.localcloud import awsauth

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(180)  # moto in-process: a hang is a bug

REPO = Path(__file__).resolve().parents[2]
# Under the policy's own-parameter prefix (moto refuses /aws/service/ names).
AMI_PARAMETER = "/sparkfab/test/debian-13/ami-id"
NOTHING = {"instances": [], "security_groups": [], "key_pairs": [], "roles": [], "profiles": []}
# moto's name for an S3 request -> the IAM action AWS checks for it.
MOTO_S3_NAMES = {"s3:HeadBucket": "s3:ListBucket"}
# What the policy grants and moto never asks about in the flow below, and why.
UNCHECKED_BY_MOTO = {
    "ec2:CreateTags": "moto checks no tags given at creation (TagSpecifications)",
    "iam:PassRole": "moto checks no PassRole when RunInstances names a profile",
    "iam:TagRole": "moto checks no tags given to CreateRole",
    "iam:TagInstanceProfile": "moto checks no tags given to CreateInstanceProfile",
    "s3:PutBucketPublicAccessBlock": "moto files PutPublicAccessBlock under CreateBucket",
    "s3:PutEncryptionConfiguration": "moto files PutBucketEncryption under CreateBucket",
    "s3:DeleteObjectVersion": "moto files DeleteObjects under DeleteObject",
    "iam:DetachRolePolicy": "not reached: sparkfab attaches no managed policy to detach",
    "s3:AbortMultipartUpload": "not reached: only when a multipart upload fails",
    "s3:GetBucketPublicAccessBlock": "not reached: read only on a bucket of the user's",
    "s3:GetEncryptionConfiguration": "not reached: read only on a bucket of the user's",
}
OTHER_CLUSTER_ROLE = "sparkfab-other-node"


# ---- moto, told what AWS checks ----------------------------------------------------------


def _moto_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The policy with moto's S3 names beside the IAM actions they stand for, and
    s3:DeleteObject on the bucket itself where the policy allows deleting object versions
    (moto authorizes DeleteObjects on the bucket's ARN; AWS each version on its object's,
    where an object action on a bucket ARN matches nothing)."""
    out = copy.deepcopy(doc)
    versions = {res for st in out["Statement"] if "s3:DeleteObjectVersion" in st["Action"]
                for res in _as_list(st["Resource"])}
    for st in out["Statement"]:
        extra = [moto for moto, aws in MOTO_S3_NAMES.items() if aws in st["Action"]]
        if {f"{res}/*" for res in _as_list(st["Resource"])} & versions:
            extra.append("s3:DeleteObject")
        st["Action"] = [*st["Action"], *extra]
    return out


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """AWS's resources for IAM and SSM calls; every (action, resource) moto authorizes."""
    monkeypatch.setattr(IamResponse, "_determine_resource", awsauth.iam_resource, raising=False)
    monkeypatch.setattr(SimpleSystemManagerResponse, "_determine_resource",
                        awsauth.ssm_resource, raising=False)
    seen: list[tuple[str, str]] = []
    real = IAMRequestBase.check_action_permitted

    def record(self: IAMRequestBase, resource: str) -> None:
        seen.append((self._action, resource))
        real(self, resource)

    monkeypatch.setattr(IAMRequestBase, "check_action_permitted", record)
    return seen


# ---- the account, the operator and the commands ------------------------------------------


def _operator(cloud: Cloud, monkeypatch: pytest.MonkeyPatch, doc: dict[str, Any]) -> None:
    """User "operator" holding exactly `doc`; its key in this process's environment only."""
    cloud.iam.create_user(UserName="operator")
    cloud.iam.put_user_policy(UserName="operator", PolicyName="sparkfab-operator",
                              PolicyDocument=json.dumps(_moto_view(doc)))
    key = cloud.iam.create_access_key(UserName="operator")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    session.forget_sessions()  # the next session reads the operator's key


def _settings_env(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"CLUSTER": cloud.cluster, "REGION": cloud.region, "WORKERS": "2",
                       "OPERATOR_CIDR": cloud.operator_cidr,
                       "AMI_SSM_PARAMETER": AMI_PARAMETER,
                       "PUBLIC_KEY_PATH": str(cloud.home / "id_ed25519.pub")}.items():
        monkeypatch.setenv(f"SPARKFAB_{key}", value)


def _files(home: Path) -> dict[str, Path]:
    """A tiny artifact mirror (one file past boto3's multipart threshold), weights, images."""
    from sparkfab.artifacts import Mirror

    root = home / "mirror"
    root.mkdir()
    mirror = Mirror(root, facts={"spark": "4.0.1", "python": "3.13"})
    for name, size in (("spark", 9 * 1024 * 1024), ("hadoop-aws", 100)):
        path = root / f"{name}.bin"
        path.write_bytes(name.encode() * (size // len(name)))
        mirror.add(name, path)
    mirror.save()
    weights = home / "tiny.weights.h5"
    weights.write_bytes(b"weights")
    images = home / "images"
    for rel in ("apple/1.jpg", "pear/2.jpg"):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(b"\xff\xd8" + rel.encode())
    return {"mirror": root, "weights": weights, "images": images}


RUN_MANIFEST = {  # the shape job/featurize_pca.py writes
    "run_id": "r1", "status": "complete",
    "counts": {"input": 2, "ok": 2, "failed": 0, "skipped": 0, "files_seen": 2},
    "pca": {"k": 1, "variance_target": 0.9, "explained_variance": [0.95],
            "cumulative_explained_variance": [0.95]},
    "files": ["features.parquet", "pca_matrix.csv", "manifest.json"],
}


class _Result:
    def __init__(self, exited: int = 0) -> None:
        self.exited, self.ok, self.stdout, self.stderr = exited, exited == 0, "", ""


class _Master:
    """The master over SSH, scripted: the driver commits its run to the bucket as the
    nodes' role would (not the operator: it is written with moto's authorization off)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def put(self, local: Any, remote: str) -> None:
        pass

    def run(self, command: str, **kw: Any) -> _Result:
        if "spark-submit" in command and "out_stream" in kw:
            kw["out_stream"].write('{"output": "s3a://x", "counts": {}}\n')
            bucket, prefix = self._output(command)
            with disable_iam_authentication():
                self.cloud.s3.put_object(Bucket=bucket, Key=f"{prefix}manifest.json",
                                         Body=json.dumps(RUN_MANIFEST))
                self.cloud.s3.put_object(Bucket=bucket, Key=f"{prefix}_SUCCESS", Body=b"")
        return _Result()

    @staticmethod
    def _output(command: str) -> tuple[str, str]:
        url = command.split("--output ", 1)[1].split()[0].strip("'\"")
        bucket, _, prefix = url.removeprefix("s3a://").partition("/")
        return bucket, prefix.rstrip("/") + "/"


class _Remote:
    def __init__(self, master: _Master) -> None:
        self.master = master

    def connection(self, node: Any) -> _Master:
        assert node.role == ROLE_MASTER
        return self.master


def _install_side(say: Any) -> None:
    """What the install (provision without --no-install) asks of AWS, with the same error
    handling (sparkfab.bringup, sparkfab.install): the host keys in the console output,
    the staged manifest and presigned downloads, the event log folder."""
    settings = load_settings({}, path=None)
    inv = cluster.require(settings)
    aws = AwsSession(settings)
    with aws_errors(aws.region, "reading the instances' host keys"):
        for node in inv.nodes:
            hostkeys._console_output(aws.client("ec2"), node.instance_id)
    downloads, _ = bringup.downloads_for(inv, settings, aws, say)
    assert {"spark", "hadoop-aws"} <= set(downloads)
    with aws_errors(inv.region, f"creating Spark's event log folder in {inv.bucket}"):
        spark.ensure_event_log_dir(inv, aws.client("s3"))


def _run_everything(cloud: Cloud, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> str:
    """provision (twice: spot workers in the default VPC, then in a named subnet with
    drift to repair), the install's AWS side, status, stage,
    upload-data, run-job (twice: staged and local weights), teardown --delete-bucket."""
    files = _files(cloud.home)
    c = Context()

    @contextmanager
    def remote(inv: Any, out: Any = None) -> Iterator[_Remote]:
        yield _Remote(_Master(cloud))

    monkeypatch.setattr(cluster, "remote", remote)
    tasks.provision(c, install=False, spot=True)
    inv = inventory.load(cloud.cluster)
    assert inv is not None
    with disable_iam_authentication():  # meanwhile: a stopped master, a new IP, a subnet
        cloud.ec2.stop_instances(InstanceIds=[inv.master.instance_id])
        subnet = cloud.ec2.describe_subnets(SubnetIds=[inv.subnet_id])["Subnets"][0]
    monkeypatch.setenv("SPARKFAB_SUBNET_ID", subnet["SubnetId"])
    tasks.provision(c, install=False, operator_cidr="198.51.100.9/32")
    tasks.status(c)
    tasks.stage(c, mirror=str(files["mirror"]), weights=str(files["weights"]))
    _install_side(print)
    tasks.upload_data(c, str(files["images"]), f"s3://{inv.bucket}/images")
    tasks.run_job(c, input=f"s3://{inv.bucket}/images", output=f"s3://{inv.bucket}/runs/1")
    tasks.run_job(c, input=f"s3://{inv.bucket}/images", output=f"s3://{inv.bucket}/runs/2",
                  weights=str(files["weights"]))
    tasks.teardown(c, yes=True, delete_bucket=True)
    return str(capsys.readouterr().out)


@pytest.fixture
def account(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """What the account holds before sparkfab: moto's default VPC, the AMI's parameter,
    another cluster; the settings want a versioned bucket."""
    cloud.ssm.put_parameter(Name=AMI_PARAMETER, Value=cloud.ami, Type="String")
    # Another sparkfab cluster's role: teardown --delete-bucket must read its policy.
    iam.ensure_role(cloud.iam, "other", "sparkfab-other-bucket", {}, lambda _m: None)
    _settings_env(cloud, monkeypatch)
    monkeypatch.setenv("SPARKFAB_BUCKET_VERSIONING", "true")
    yield cloud


# ---- the tests ---------------------------------------------------------------------------


def test_an_operator_holding_exactly_the_policy_runs_every_command(
        account: Cloud, monkeypatch: pytest.MonkeyPatch, capsys: Any,
        checked: list[tuple[str, str]]) -> None:
    doc = operator_policy.document()
    _operator(account, monkeypatch, doc)
    with enable_iam_authentication():
        out = _run_everything(account, monkeypatch, capsys)
    assert "created: bucket" in out
    assert "were stopped, started" in out and "revoked 1 rule(s)" in out
    assert "uploaded 2 files" in out
    assert "torn down" in out
    assert account.leftovers() == {**NOTHING, "roles": [OTHER_CLUSTER_ROLE],
                                   "profiles": [OTHER_CLUSTER_ROLE]}
    assert not [b for b in account.buckets() if b.startswith("sparkfab-")]
    # moto really asked: the calls were signed by the operator and checked.
    asked = {MOTO_S3_NAMES.get(action, action) for action, _ in checked}
    assert {"ec2:RunInstances", "iam:CreateRole", "s3:PutObject", "ssm:GetParameter"} <= asked
    assert ("iam:CreateRole", "arn:aws:iam::123456789012:role/sparkfab/sparkfab-demo-node") \
        in checked
    assert asked <= operator_policy.actions(doc)
    assert operator_policy.actions(doc) - asked == set(UNCHECKED_BY_MOTO)


@pytest.mark.parametrize("missing", [
    "ec2:RunInstances",
    "ec2:AuthorizeSecurityGroupIngress",
    "iam:CreateRole",
    "iam:GetRolePolicy",  # teardown --delete-bucket asks which clusters use the bucket
    "ssm:GetParameter",
    "s3:PutObject",
    "s3:ListBucket",
    "s3:GetObject",
    "ec2:TerminateInstances",
])
def test_a_missing_permission_is_one_line_that_names_it(
        account: Cloud, monkeypatch: pytest.MonkeyPatch, capsys: Any,
        checked: list[tuple[str, str]], missing: str) -> None:
    doc = operator_policy.document()
    for st in doc["Statement"]:
        st["Action"] = [a for a in st["Action"] if a != missing]
    doc["Statement"] = [st for st in doc["Statement"] if st["Action"]]
    assert missing not in operator_policy.actions(doc)
    _operator(account, monkeypatch, doc)
    with enable_iam_authentication(), pytest.raises(Exit) as err:
        _run_everything(account, monkeypatch, capsys)
    error, hint = str(err.value.message).split("\n")
    assert error.startswith("error: ") and f"AWS denied {missing}" in error, error
    assert hint.startswith("hint: ") and "fab operator-policy" in hint


def test_the_readme_names_the_policy_file_and_only_actions_it_holds() -> None:
    import re

    readme = (REPO / "README.md").read_text()
    assert "sparkfab/aws/operator-policy.json" in readme and "fab operator-policy" in readme
    section = readme.split("**Permissions**", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z0-9]+:[A-Za-z*]+)`", section))
    assert named and named <= operator_policy.actions()


def test_the_policy_is_a_valid_document_with_a_sid_per_statement() -> None:
    doc = json.loads(operator_policy.POLICY_FILE.read_text())
    assert doc["Version"] == "2012-10-17"
    sids = [st["Sid"] for st in doc["Statement"]]
    assert len(sids) == len(set(sids)) and all(sids)
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow" and "Condition" not in st  # moto checks no Condition
        assert st["Action"] == sorted(st["Action"]), st["Sid"]
        assert not any(a.endswith("*") for a in st["Action"]), "every action by name"
    # Wide open only where AWS offers no resource to scope to, or Describe/List only.
    wide = {a for st in doc["Statement"] if st["Resource"] == "*" for a in st["Action"]}
    assert not {a for a in wide if a.startswith(("iam:", "s3:", "ssm:"))} - {
        "iam:ListRoles", "iam:ListInstanceProfiles"}


def test_a_named_bucket_replaces_sparkfabs_bucket_names() -> None:
    doc = operator_policy.document("my-data.eu")
    resources = json.dumps([st["Resource"] for st in doc["Statement"]])
    assert "arn:aws:s3:::my-data.eu" in resources and "arn:aws:s3:::my-data.eu/*" in resources
    assert "arn:aws:s3:::sparkfab-" not in resources
    assert operator_policy.actions(doc) == operator_policy.actions()
    for bad in ("*", "a/b", "arn:aws:s3:::x", "UPPER", "x"):
        with pytest.raises(UserError, match="not an S3 bucket name"):
            operator_policy.document(bad)


def test_fab_operator_policy_prints_the_file(capsys: Any) -> None:
    tasks.operator_policy(Context())
    assert json.loads(capsys.readouterr().out) == operator_policy.document()
    tasks.operator_policy(Context(), bucket="my-data")
    assert "arn:aws:s3:::my-data/*" in capsys.readouterr().out
    with pytest.raises(Exit) as err:
        tasks.operator_policy(Context(), bucket="no/such")
    assert str(err.value.message).startswith("error: not an S3 bucket name")


def test_the_policy_file_ships_with_the_package() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"sparkfab.aws" = ["*.json"]' in pyproject
    assert json.loads(operator_policy.render()) == operator_policy.document()


def _upload_denied() -> Exception:
    """What upload_file raises when PutObject is denied: boto3's wrapper, no ClientError."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    try:
        try:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}},
                              "PutObject")
        except ClientError as exc:
            raise S3UploadFailedError(f"Failed to upload a to b/k: {exc}")  # noqa: B904
    except S3UploadFailedError as wrapped:
        return wrapped


def test_a_denied_upload_names_s3_put_object_in_every_path() -> None:
    from sparkfab import transfer

    err = session.translate(_upload_denied(), "eu-west-3", "staging artifacts")
    assert err is not None and err.message.startswith("AWS denied s3:PutObject while staging")
    line = transfer.s3_error(_upload_denied(), "b", "upload to s3://b/x").message
    assert "AWS denied s3:PutObject" in line and "\n" not in line
