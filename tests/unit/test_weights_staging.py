"""Model weights staged into the cluster's bucket by digest, as run-job's default (moto S3)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from sparkfab import weights
from sparkfab.errors import UserError

REGION = "eu-west-3"
BUCKET = "sparkfab-t-weights"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


def test_weights_are_staged_once_under_their_digest_and_become_the_default(
    s3, tmp_path: Path
) -> None:
    assert weights.staged_default(s3, BUCKET) is None
    first = tmp_path / "a.weights.h5"
    first.write_bytes(b"first weights")
    said: list[str] = []
    staged = weights.stage(s3, BUCKET, first, "demo", said.append)
    digest = hashlib.sha256(b"first weights").hexdigest()
    assert staged.key == f"sparkfab/weights/{digest[:16]}/a.weights.h5"
    assert s3.get_object(Bucket=BUCKET, Key=staged.key)["Body"].read() == b"first weights"
    assert weights.staged_default(s3, BUCKET) == staged
    assert "uploading" in said[-1]

    said.clear()
    assert weights.stage(s3, BUCKET, first, "demo", said.append) == staged
    assert "already staged" in said[-1]  # same digest: not uploaded again

    second = tmp_path / "b.weights.h5"
    second.write_bytes(b"second weights")
    newer = weights.stage(s3, BUCKET, second, "b.weights.h5", said.append)
    assert weights.staged_default(s3, BUCKET) == newer != staged
    # The older copy stays: a job that is reading it is not disturbed.
    assert s3.head_object(Bucket=BUCKET, Key=staged.key)["ContentLength"] == 13
    assert newer.s3a(BUCKET) == f"s3a://{BUCKET}/{newer.key}"


def test_local_file_accepts_demo_and_weights_files_and_refuses_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    demo = tmp_path / weights.demo_weights.DEFAULT_OUT
    demo.parent.mkdir(parents=True)
    demo.write_bytes(b"demo")
    assert weights.local_file("demo") == weights.demo_weights.DEFAULT_OUT
    mine = tmp_path / "mine.keras"
    mine.write_bytes(b"k")
    assert weights.local_file(str(mine)) == mine
    with pytest.raises(UserError, match="weights file not found"):
        weights.local_file(str(tmp_path / "gone.weights.h5"))
    with pytest.raises(UserError, match="expected demo, imagenet or a"):
        weights.local_file("model.bin")
