"""`fab stage`: put every artifact a node downloads into the cluster's bucket, once.

The files come from a mirror directory (one with a manifest.json, e.g. the local cloud's
.cache/mirror) or, by default, from their origins (Apache, Maven Central, the Miniforge
release, PyPI for the wheelhouse) into .cache/artifacts, each verified on the way in.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparkfab import artifact_pins, artifacts, wheelhouse
from sparkfab import inventory as inv_mod
from sparkfab.artifacts import Mirror, StageReport
from sparkfab.errors import UserError

ORIGINS_CACHE = Path(".cache/artifacts")
Say = Callable[[str], None]


def from_origins(
    out: Path = ORIGINS_CACHE,
    python_env: str = "venv",
    python_version: str | None = None,
    say: Say = print,
) -> Mirror:
    """A mirror of the origins (downloads kept in `out` and reused while they verify)."""
    python_version = python_version or "{}.{}".format(*sys.version_info[:2])
    out.mkdir(parents=True, exist_ok=True)
    try:
        mirror = Mirror.load(out)
    except UserError:
        mirror = Mirror(out)
    for source in artifacts.origin_sources(python_env):
        path = artifacts.fetch_origin(source, out, say)
        mirror.add(source.name, path, source.url)
        mirror.save()
    tar = out / wheelhouse.tarball_name(python_version)
    wanted = wheelhouse.requirements()
    if not tar.exists() or mirror.facts.get("requirements") != wanted \
            or mirror.facts.get("python") != python_version:
        say(f"building the wheelhouse for Python {python_version} (pip)")
        tar = wheelhouse.build(out, python_version)
    mirror.add(artifacts.WHEELHOUSE, tar, "PyPI via pip download")
    mirror.facts.update(spark=artifacts.spark_version(), hadoop=artifacts.hadoop_version(),
                        python=python_version, requirements=wanted,
                        platform=wheelhouse.DEFAULT_PLATFORM)
    mirror.save()
    return mirror


def bucket_for(settings: Any, directory: Path | None = None) -> str:
    """The cluster's bucket: the inventory's (provision made or chose it), else the setting."""
    known = inv_mod.load(settings.cluster, directory)
    bucket = (known.bucket if known else "") or settings.bucket
    if not bucket:
        raise UserError(
            f"cluster {settings.cluster} has no bucket yet",
            hint="run `fab provision` first, or set bucket in sparkfab.yaml",
        )
    return str(bucket)


def stage_cluster(
    s3: Any, bucket: str, mirror: Mirror, say: Say = print, directory: Path | None = None
) -> StageReport:
    """Verify the mirror, then copy what the bucket lacks; prints one line per artifact.
    What was staged is pinned on this machine (sparkfab.artifact_pins)."""
    t0 = time.monotonic()
    say(f"verifying {len(mirror.files)} artifacts in {mirror.root}")
    mirror.verify()
    say(f"staging into s3://{bucket}/{artifacts.STAGE_PREFIX}")
    report = artifacts.stage(s3, bucket, mirror, progress=say)
    save_staged_manifest(s3, bucket, mirror)
    say(f"pinned their digests in {artifact_pins.pin(bucket, mirror, directory)}")
    say(f"staged: {len(report.uploaded)} uploaded, {len(report.skipped)} already there "
        f"({time.monotonic() - t0:.1f}s)")
    return report


# The staged copy's own manifest: the bucket then says what it holds (names, sha512, the
# versions the wheelhouse was built for), so an install needs only the bucket.
STAGED_MANIFEST_KEY = artifacts.STAGE_PREFIX + artifacts.MANIFEST


def save_staged_manifest(s3: Any, bucket: str, mirror: Mirror) -> None:
    doc = {"facts": mirror.facts, "files": [dataclasses.asdict(f) for f in mirror.files]}
    s3.put_object(Bucket=bucket, Key=STAGED_MANIFEST_KEY, ContentType="application/json",
                  Body=json.dumps(doc, indent=2, sort_keys=True).encode())


def staged_mirror(s3: Any, bucket: str) -> Mirror | None:
    """What was staged into the bucket (files and facts), or None when nothing was."""
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=STAGED_MANIFEST_KEY)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    where = f"s3://{bucket}/{STAGED_MANIFEST_KEY}"
    try:
        doc = json.loads(body)
    except ValueError:
        raise artifacts.BadManifest(f"{where} is not JSON",
                                    hint="re-stage the artifacts (`fab stage`)") from None
    return Mirror.from_doc(Path(f"s3://{bucket}/{artifacts.STAGE_PREFIX}"), doc, where)
