"""What the nodes' role may do in the cluster bucket, asked of moto with its IAM
authorization on: requests signed with the role's assumed credentials are checked against
the policy sparkfab writes (templates/s3-policy.json.j2), as AWS would check them.

The bucket outlives the cluster, and the next cluster installs what sparkfab/artifacts/
holds: a node (or whoever owns one) must not be able to change it. Nodes fetch artifacts
through presigned URLs, signed by the operator, so the role needs no access there at all.
"""

from __future__ import annotations

from pathlib import Path

import boto3
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import enable_iam_authentication

from sparkfab import artifacts
from sparkfab.aws import iam

pytest_plugins = ["aws_fixtures"]
REGION = "eu-west-3"
BUCKET = "demo-bucket"
STAGED = artifacts.STAGE_PREFIX + "0123456789abcdef/spark-4.0.1-bin-hadoop3.tgz"
MANIFEST = artifacts.STAGE_PREFIX + artifacts.MANIFEST


def _node_s3() -> object:
    """An S3 client holding the credentials a node gets from its instance profile."""
    names, _ = iam.ensure_role(boto3.client("iam"), "demo", BUCKET, {}, lambda _m: None)
    arn = boto3.client("iam").get_role(RoleName=names.role)["Role"]["Arn"]
    creds = boto3.client("sts", REGION).assume_role(
        RoleArn=arn, RoleSessionName="i-0node")["Credentials"]
    return boto3.client("s3", REGION, aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


def _denied(call: object, **kw: object) -> bool:
    try:
        call(**kw)  # type: ignore[operator]
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "AccessDenied"
    return False


@mock_aws
def test_a_node_can_neither_read_nor_change_the_staged_artifacts(aws_env: Path) -> None:
    operator = boto3.client("s3", REGION)
    for name in (BUCKET, "someone-elses"):
        operator.create_bucket(Bucket=name,
                               CreateBucketConfiguration={"LocationConstraint": REGION})
    operator.put_object(Bucket=BUCKET, Key=MANIFEST, Body=b'{"files": []}')
    operator.put_object(Bucket=BUCKET, Key=STAGED, Body=b"the real Spark")
    node = _node_s3()
    with enable_iam_authentication():
        # What the job needs: its data, outputs and event logs anywhere else in the bucket.
        node.put_object(Bucket=BUCKET, Key="runs/1/part-0", Body=b"ok")
        assert node.get_object(Bucket=BUCKET, Key="runs/1/part-0")["Body"].read() == b"ok"
        node.delete_object(Bucket=BUCKET, Key="runs/1/part-0")
        node.list_objects_v2(Bucket=BUCKET, Prefix="runs/")
        # The staged artifacts and their manifest: no access of any kind.
        for key in (MANIFEST, STAGED, artifacts.STAGE_PREFIX + "new-file"):
            assert _denied(node.put_object, Bucket=BUCKET, Key=key, Body=b"poison"), key
            assert _denied(node.get_object, Bucket=BUCKET, Key=key), key
            assert _denied(node.delete_object, Bucket=BUCKET, Key=key), key
        assert _denied(node.create_multipart_upload, Bucket=BUCKET, Key=STAGED)
        # Nothing outside the cluster bucket either.
        assert _denied(node.put_object, Bucket="someone-elses", Key="x", Body=b"x")
    assert operator.get_object(Bucket=BUCKET, Key=STAGED)["Body"].read() == b"the real Spark"


def test_the_deny_names_the_staging_prefix_sparkfab_uses() -> None:
    doc = iam.bucket_policy(BUCKET)
    denies = [s for s in doc["Statement"] if s["Effect"] == "Deny"]
    assert denies == [{
        "Sid": "NoAccessToStagedArtifacts",
        "Effect": "Deny",
        "Action": "s3:*",
        "Resource": f"arn:aws:s3:::{BUCKET}/{artifacts.STAGE_PREFIX}*",
    }]
    assert not any("Condition" in s for s in doc["Statement"])
