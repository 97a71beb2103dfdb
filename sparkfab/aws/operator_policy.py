"""The IAM policy the operator's identity needs: `operator-policy.json`, the one copy.

`fab operator-policy` prints it to attach to the user or role that runs `fab`; the README
points to the file rather than repeating it, and tests/unit/test_operator_policy.py runs
every command as a moto user holding exactly this document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparkfab.errors import UserError

POLICY_FILE = Path(__file__).with_name("operator-policy.json")
# The bucket the default policy allows: every name sparkfab gives a bucket
# (storage.default_bucket_name) starts with it.
DEFAULT_BUCKET_ARN = "arn:aws:s3:::sparkfab-*"
_BUCKET_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


def document(bucket: str | None = None) -> dict[str, Any]:
    """The policy; with `bucket`, its S3 statements name that bucket instead of sparkfab-*
    (a `bucket:` setting outside sparkfab's names needs its own ARN there)."""
    doc: dict[str, Any] = json.loads(POLICY_FILE.read_text())
    if bucket is None:
        return doc
    _check_bucket_name(bucket)
    arn = f"arn:aws:s3:::{bucket}"
    for st in doc["Statement"]:
        res = st["Resource"]
        if res == DEFAULT_BUCKET_ARN:
            st["Resource"] = arn
        elif res == DEFAULT_BUCKET_ARN + "/*":
            st["Resource"] = arn + "/*"
    return doc


def _check_bucket_name(bucket: str) -> None:
    # A name with `*`, `/` or `:` would widen or break the ARN rather than name one bucket.
    if not (3 <= len(bucket) <= 63 and set(bucket) <= _BUCKET_NAME_CHARS
            and bucket[0].isalnum() and bucket[-1].isalnum()):
        raise UserError(f"not an S3 bucket name: {bucket!r}",
                        hint="3-63 characters: lower-case letters, digits, dots and hyphens")


def actions(doc: dict[str, Any] | None = None) -> set[str]:
    """Every action the policy allows, e.g. "ec2:RunInstances"."""
    out: set[str] = set()
    for st in (doc or document())["Statement"]:
        listed = st["Action"]
        out.update([listed] if isinstance(listed, str) else listed)
    return out


def render(bucket: str | None = None) -> str:
    return json.dumps(document(bucket), indent=2) + "\n"
