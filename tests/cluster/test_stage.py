"""Staging the artifact mirror into moto S3, and nodes fetching it with presigned URLs only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkfab import artifacts, demo_weights, weights
from sparkfab.artifacts import Mirror
from sparkfab.localcloud import LocalCloud
from sparkfab.localcloud.hosts import LOCAL_REGION, MOTO_CREDENTIALS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]


def test_stage_copies_every_artifact_once(
    local_cloud: LocalCloud, mirror: Mirror, staged_artifacts: object
) -> None:
    staged = staged_artifacts
    names = {f.name for f in mirror.files}
    assert names >= {"spark", "hadoop-aws", "aws-sdk-bundle", "wheelhouse"}
    assert set(staged.report.uploaded) == names and staged.report.skipped == []

    s3 = local_cloud.s3_client()
    listed = s3.list_objects_v2(Bucket=staged.bucket, Prefix=artifacts.STAGE_PREFIX)
    assert {o["Key"]: o["Size"] for o in listed["Contents"]} == {
        artifacts.staged_key(f): f.size for f in mirror.files
    }

    t0 = time.monotonic()
    again = artifacts.stage(s3, staged.bucket, mirror, progress=lambda m: None)
    seconds = time.monotonic() - t0
    total = sum(f.size for f in mirror.files) / 1e6
    print(f"\nfigure: stage {total:.0f} MB into moto: first {staged.seconds:.1f}s, "
          f"again {seconds:.2f}s")
    assert again.uploaded == [] and set(again.skipped) == names
    assert seconds < 5


def _in_node(local_cloud: LocalCloud, node: str, script: str) -> str:
    out = subprocess.run(
        local_cloud.hosts[node].exec_argv("sh", "-c", script),
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_node_fetches_with_a_presigned_url_and_not_without(
    local_cloud: LocalCloud, mirror: Mirror, staged_artifacts: object
) -> None:
    downloads = staged_artifacts.downloads
    for name in ("hadoop-aws", "spark"):
        d = downloads[name]
        assert "X-Amz-Signature=" in d.url and d.url.startswith(local_cloud.moto_endpoint)
        # What the install does on the node: plain curl, then the sha512 from the manifest.
        got = _in_node(local_cloud, "worker-1", f"curl -sSf '{d.url}' | sha512sum")
        assert got.split()[0] == d.digest == mirror.get(name).sha512
    unsigned = downloads["hadoop-aws"].url.split("?", 1)[0]
    code = _in_node(local_cloud, "worker-2",
                    f"curl -s -o /dev/null -w '%{{http_code}}' '{unsigned}'")
    assert code == "403"


def _fab_stage(local_cloud: LocalCloud, bucket: str, tmp_path: Path, *args: str):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SPARKFAB_"))}
    env.update(
        SPARKFAB_ENDPOINT_URL=str(local_cloud.moto_endpoint), SPARKFAB_BUCKET=bucket,
        # moto's plain-http endpoint is accepted for the local cloud only, as users get it.
        SPARKFAB_LOCAL_CLOUD=str(local_cloud.workdir),
        SPARKFAB_REGION=LOCAL_REGION, SPARKFAB_INVENTORY_DIR=str(tmp_path / "inventory"),
        AWS_ACCESS_KEY_ID=MOTO_CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=MOTO_CREDENTIALS["aws_secret_access_key"],
    )
    fab = Path(sys.executable).with_name("fab")
    return subprocess.run([str(fab), "-r", str(REPO), "stage", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_fab_stage_from_a_mirror_skips_what_the_bucket_has(
    local_cloud: LocalCloud, mirror: Mirror, staged_artifacts: object, tmp_path: Path
) -> None:
    demo = REPO / demo_weights.DEFAULT_OUT
    out = _fab_stage(local_cloud, staged_artifacts.bucket, tmp_path, "--mirror", str(mirror.root),
                     "--weights", str(demo))
    assert out.returncode == 0, out.stderr + out.stdout
    assert f"staged: 0 uploaded, {len(mirror.files)} already there" in out.stdout
    # The weights too, by digest, as run-job's default for this cluster.
    staged = weights.staged_default(local_cloud.s3_client(), staged_artifacts.bucket)
    assert staged is not None and staged.sha256 == weights.sha256_of(demo)
    body = local_cloud.s3_client().get_object(Bucket=staged_artifacts.bucket, Key=staged.key)
    assert body["Body"].read() == demo.read_bytes()

    bad = _fab_stage(local_cloud, staged_artifacts.bucket, tmp_path, "--mirror", str(tmp_path))
    assert bad.returncode == 1
    assert f"error: {tmp_path} is not an artifact mirror (no manifest.json)" in bad.stderr
    assert "hint: build one first" in bad.stderr and "Traceback" not in bad.stderr
