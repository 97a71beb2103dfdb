"""The booted local cloud's moto_server with IAM authorization on (principals.py), over HTTP
as the nodes and `fab` reach it: each principal may do what its policy allows and nothing
else, with AWS's semantics where moto's differ (awsauth.py).

One moto_server for the module, stopped by pid; the node is a moto STS session of a role
holding the node policy sparkfab renders (templates/s3-policy.json.j2).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sparkfab.aws import iam as node_iam
from sparkfab.localcloud import netns, principals
from sparkfab.localcloud.hosts import LOCAL_REGION, MOTO_CREDENTIALS, _free_port, _wait_for_http

pytestmark = pytest.mark.timeout(120)

BUCKET = "sparkfab-local-authz"
OTHER_BUCKET = "sparkfab-local-elsewhere"
ARTIFACTS = node_iam.STAGE_PREFIX
_NO_RETRY = Config(retries={"max_attempts": 1})


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("moto-authz")
    port = _free_port("127.0.0.1")
    endpoint = f"http://127.0.0.1:{port}"
    with (workdir / "moto.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sparkfab.localcloud.motoserver", "--console-dir",
             str(workdir / "console"), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_for_http(endpoint + "/moto-api/", 60)
        principals.enable(endpoint, workdir)
        yield {"endpoint": endpoint, "workdir": workdir}
    finally:
        netns.stop_pids([proc.pid])
        proc.wait(timeout=10)


def _client(moto: dict[str, Any], service: str, creds: dict[str, str]) -> Any:
    return boto3.client(service, endpoint_url=moto["endpoint"], region_name=LOCAL_REGION,
                        config=_NO_RETRY, **creds)


def _as(moto: dict[str, Any], service: str, who: str) -> Any:
    return _client(moto, service, principals.credentials(moto["workdir"], who))


@pytest.fixture(scope="module")
def node(moto: dict[str, Any]) -> dict[str, str]:
    """The node role's STS credentials, as IMDS hands them to a node."""
    admin_s3, iam = _as(moto, "s3", principals.ADMIN), _as(moto, "iam", principals.ADMIN)
    for bucket in (BUCKET, OTHER_BUCKET):
        admin_s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={
            "LocationConstraint": LOCAL_REGION})
    admin_s3.put_object(Bucket=BUCKET, Key=ARTIFACTS + "spark.tgz", Body=b"spark")
    role = iam.create_role(RoleName="sparkfab-authz-node", Path=node_iam.IAM_PATH,
                           AssumeRolePolicyDocument=json.dumps(
                               node_iam.ASSUME_ROLE_POLICY))["Role"]
    iam.put_role_policy(RoleName=role["RoleName"], PolicyName="s3",
                        PolicyDocument=json.dumps(node_iam.bucket_policy(BUCKET)))
    got = _as(moto, "sts", principals.ADMIN).assume_role(
        RoleArn=role["Arn"], RoleSessionName="i-node")["Credentials"]
    return {"aws_access_key_id": got["AccessKeyId"],
            "aws_secret_access_key": got["SecretAccessKey"],
            "aws_session_token": got["SessionToken"]}


def _denied(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return str(caught.value.response["Error"]["Code"])


def _http_status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_the_dummy_keys_are_refused_once_iam_decides(moto: dict[str, Any]) -> None:
    s3 = _client(moto, "s3", dict(MOTO_CREDENTIALS))
    assert _denied(s3.list_buckets) == "InvalidAccessKeyId"
    ec2 = _client(moto, "ec2", dict(MOTO_CREDENTIALS))
    assert _denied(ec2.describe_instances) == "AuthFailure"


def test_the_credentials_file_is_root_only(moto: dict[str, Any]) -> None:
    mode = (Path(moto["workdir"]) / principals.CREDENTIALS_FILE).stat().st_mode & 0o777
    assert mode == 0o600


def test_the_operator_holds_the_shipped_policy_and_nothing_more(moto: dict[str, Any],
                                                                 node: dict[str, str]) -> None:
    iam = _as(moto, "iam", principals.OPERATOR)
    # In the policy: sparkfab's own role path; outside it: any other role.
    trust = json.dumps(node_iam.ASSUME_ROLE_POLICY)
    iam.create_role(RoleName="sparkfab-authz-op", Path=node_iam.IAM_PATH,
                    AssumeRolePolicyDocument=trust)
    assert _denied(iam.create_role, RoleName="someone-else", Path="/",
                   AssumeRolePolicyDocument=trust) == "AccessDenied"
    assert _denied(iam.create_user, UserName="intruder") == "AccessDenied"
    s3 = _as(moto, "s3", principals.OPERATOR)
    s3.head_bucket(Bucket=BUCKET)  # checked as s3:ListBucket, as on AWS
    s3.put_object(Bucket=BUCKET, Key=ARTIFACTS + "jar", Body=b"jar")


def test_a_presigned_url_is_checked_for_signature_expiry_and_policy(
        moto: dict[str, Any], node: dict[str, str]) -> None:
    s3 = _as(moto, "s3", principals.OPERATOR)
    key = ARTIFACTS + "spark.tgz"
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key},
                                    ExpiresIn=600)
    assert _http_status(url) == 200
    assert _http_status(url.split("?", 1)[0]) == 403  # no signature at all
    tampered = url.replace("spark.tgz", "spark.tgz.other")
    assert _http_status(tampered) == 403
    mangled = url.replace("X-Amz-Credential=", "X-Amz-Credential=x%2F")
    assert _http_status(mangled) == 403  # a malformed credential scope, not a 500
    past = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key},
                                     ExpiresIn=1)
    signed_at = past.split("X-Amz-Date=", 1)[1][:16]
    earlier = past.replace(f"X-Amz-Date={signed_at}", "X-Amz-Date=20200101T000000Z")
    assert _http_status(earlier) == 403  # expired (and so re-signing is not attempted)
    # Signed by the node: its role may not read the staged artifacts.
    by_node = _client(moto, "s3", node).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600)
    assert _http_status(by_node) == 403
    _client(moto, "s3", node).put_object(Bucket=BUCKET, Key="data/x.bin", Body=b"x")
    by_node_data = _client(moto, "s3", node).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "data/x.bin"}, ExpiresIn=600)
    assert _http_status(by_node_data) == 200


def test_the_node_role_reads_and_writes_its_data_and_nothing_else(
        moto: dict[str, Any], node: dict[str, str]) -> None:
    s3 = _client(moto, "s3", node)
    s3.head_bucket(Bucket=BUCKET)
    keys = ["runs/r1/features.parquet/part=0/a b.parquet", "runs/r1/_temporary/0/x",
            "features/fingerprint=abc/batch=1/_SUCCESS"]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"ok")
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"ok"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]
    assert {o["Key"] for o in listed} >= set(keys[:2])
    # s3a's commit: DeleteObjects, authorized per key.
    gone = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in gone["Deleted"]) == sorted(keys) and not gone.get("Errors")
    assert _denied(s3.put_object, Bucket=BUCKET, Key=ARTIFACTS + "spark.tgz",
                   Body=b"evil") == "AccessDenied"
    assert _denied(s3.get_object, Bucket=BUCKET, Key=ARTIFACTS + "spark.tgz") == "AccessDenied"
    refused = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [
        {"Key": ARTIFACTS + "spark.tgz"}]})
    assert [e["Code"] for e in refused["Errors"]] == ["AccessDenied"]
    assert _as(moto, "s3", principals.ADMIN).get_object(
        Bucket=BUCKET, Key=ARTIFACTS + "spark.tgz")["Body"].read() == b"spark"
    for call, kwargs in ((s3.list_objects_v2, {}), (s3.put_object, {"Key": "x", "Body": b""}),
                         (s3.head_bucket, {})):
        assert _denied(call, Bucket=OTHER_BUCKET, **kwargs) in {"AccessDenied", "403"}
    ec2 = _client(moto, "ec2", node)
    # AWS says UnauthorizedOperation; moto AccessDenied. Either is the role being refused.
    assert _denied(ec2.describe_instances) in {"UnauthorizedOperation", "AccessDenied"}
