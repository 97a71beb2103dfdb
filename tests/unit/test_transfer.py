"""`fab upload-data` against moto S3 in-process: what lands in the bucket, and what does not."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from sparkfab import s3path, transfer
from sparkfab.errors import UserError

REGION = "eu-west-3"
BUCKET = "sparkfab-test-data"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto's placeholder identity; nothing here can reach AWS.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def s3(aws_env: None):
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        yield client


class PutCounter:
    """Counts the PUTs that really reach S3 (single and multipart), by key."""

    def __init__(self, client) -> None:
        self.keys: list[str] = []
        client.meta.events.register("before-parameter-build.s3.PutObject", self._seen)
        client.meta.events.register("before-parameter-build.s3.CreateMultipartUpload", self._seen)

    def _seen(self, params, **_kwargs) -> None:
        self.keys.append(params["Key"])


def make_images(root: Path) -> dict[str, bytes]:
    """A small labelled tree, with names users really have (spaces, non-ASCII)."""
    files = {
        "apple/a 1.jpg": b"\xff\xd8" + b"a" * 100,
        "apple/a2.JPG": b"\xff\xd8" + b"b" * 200,
        "banane/bané.png": b"\x89PNG" + b"c" * 300,
        "cherry/deep/c3.jpeg": b"\xff\xd8" + b"d" * 400,
        "cherry/c4.jpg": b"",  # zero bytes: still data, the job lists it in errors
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "apple" / ".a3.jpg.part").write_bytes(b"partial")
    return files


def bucket_objects(client, prefix: str) -> dict[str, bytes]:
    out = {}
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        out[obj["Key"]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def test_parse_accepts_s3_and_s3a_and_rejects_others() -> None:
    assert s3path.parse("s3://b-1/x/y/") == s3path.parse("s3a://b-1/x/y")
    assert s3path.parse("s3a://b-1/x/y").s3 == "s3://b-1/x/y/"
    assert s3path.parse("s3://b-1").prefix == ""
    for bad in ("/tmp/x", "https://b-1/x", "s3://B_ad/x", "s3://b-1/x//y"):
        with pytest.raises(UserError):
            s3path.parse(bad)


def test_upload_puts_every_file_under_the_prefix_and_skips_hidden(s3, tmp_path: Path) -> None:
    files = make_images(tmp_path)
    dest = s3path.parse(f"s3a://{BUCKET}/datasets/fruits")
    out = io.StringIO()
    result = transfer.upload_folder(s3, tmp_path, dest, workers=4, out=out)

    got = bucket_objects(s3, "datasets/fruits/")
    assert got == {f"datasets/fruits/{k}": v for k, v in files.items()}
    assert result.uploaded == len(files) and result.skipped == 0 and not result.failed
    head = s3.head_object(Bucket=BUCKET, Key="datasets/fruits/apple/a 1.jpg")
    assert head["ContentType"] == "image/jpeg"
    assert "5/5 files" in out.getvalue()  # the progress line counts what was uploaded


def test_rerun_uploads_nothing(s3, tmp_path: Path) -> None:
    make_images(tmp_path)
    dest = s3path.parse(f"s3://{BUCKET}/d")
    transfer.upload_folder(s3, tmp_path, dest, out=io.StringIO())
    puts = PutCounter(s3)
    again = transfer.upload_folder(s3, tmp_path, dest, out=io.StringIO())
    assert puts.keys == []
    assert again.uploaded == 0 and again.skipped == 5


def test_a_file_whose_size_changed_is_uploaded_again(s3, tmp_path: Path) -> None:
    make_images(tmp_path)
    dest = s3path.parse(f"s3://{BUCKET}/d")
    transfer.upload_folder(s3, tmp_path, dest, out=io.StringIO())
    (tmp_path / "apple" / "a2.JPG").write_bytes(b"\xff\xd8 re-exported, larger" * 20)
    puts = PutCounter(s3)
    transfer.upload_folder(s3, tmp_path, dest, out=io.StringIO())
    assert puts.keys == ["d/apple/a2.JPG"]
    body = s3.get_object(Bucket=BUCKET, Key="d/apple/a2.JPG")["Body"].read()
    assert body == (tmp_path / "apple" / "a2.JPG").read_bytes()


def test_an_interrupted_upload_resumes_where_it_stopped(s3, tmp_path: Path) -> None:
    files = make_images(tmp_path)
    dest = s3path.parse(f"s3://{BUCKET}/d")
    calls = {"n": 0}

    def ctrl_c_after_two(_f: transfer.LocalFile) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        transfer.upload_folder(
            s3, tmp_path, dest, workers=1, out=out, on_uploaded=ctrl_c_after_two
        )
    assert "run the same command again" in out.getvalue()
    first = set(bucket_objects(s3, "d/"))
    assert len(first) == 2

    puts = PutCounter(s3)
    result = transfer.upload_folder(s3, tmp_path, dest, out=io.StringIO())
    assert set(puts.keys) == {f"d/{k}" for k in files} - first  # only the rest
    assert result.skipped == 2 and result.uploaded == len(files) - 2
    assert bucket_objects(s3, "d/") == {f"d/{k}": v for k, v in files.items()}


def test_missing_folder_is_a_clear_error(s3, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        transfer.upload_folder(s3, tmp_path / "nope", s3path.parse(f"s3://{BUCKET}/d"))
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="is not a folder"):
        transfer.upload_folder(s3, tmp_path / "f.jpg", s3path.parse(f"s3://{BUCKET}/d"))


def test_missing_bucket_is_a_clear_error(s3, tmp_path: Path) -> None:
    make_images(tmp_path)
    with pytest.raises(UserError, match="bucket 'no-such-bucket-5' not found") as err:
        transfer.upload_folder(s3, tmp_path, s3path.parse("s3://no-such-bucket-5/d"))
    assert err.value.hint


@set_initial_no_auth_action_count(4)
def test_access_denied_is_a_clear_error(aws_env: None, tmp_path: Path) -> None:
    # moto enforces IAM after the first 4 calls: a user allowed only another bucket.
    make_images(tmp_path)
    with mock_aws():
        admin = boto3.client("s3", region_name=REGION)
        admin.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        iam = boto3.client("iam", region_name=REGION)
        iam.create_user(UserName="analyst")
        iam.put_user_policy(
            UserName="analyst", PolicyName="other-bucket-only",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "s3:*",
                "Resource": ["arn:aws:s3:::other-bucket", "arn:aws:s3:::other-bucket/*"],
            }]}),
        )
        key = iam.create_access_key(UserName="analyst")["AccessKey"]
        analyst = boto3.client(
            "s3", region_name=REGION, aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        with pytest.raises(UserError, match="access denied to bucket") as err:
            transfer.upload_folder(analyst, tmp_path, s3path.parse(f"s3://{BUCKET}/d"))
        assert "\n" not in err.value.message
