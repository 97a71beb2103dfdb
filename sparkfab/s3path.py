"""S3 locations as users write them: `s3://bucket/prefix` or Spark's `s3a://bucket/prefix`.

boto3 wants (bucket, key); Spark on the cluster wants `s3a://`. One parser for both, so a
user may paste either form into any task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparkfab.errors import UserError

SCHEMES = ("s3://", "s3a://")
# S3's bucket naming rules (general purpose buckets): 3-63 of [a-z0-9.-], starting and
# ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Path:
    bucket: str
    prefix: str = ""  # "" or "a/b/" (always ends with "/" when not empty)

    @property
    def s3(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def s3a(self) -> str:
        return f"s3a://{self.bucket}/{self.prefix}"

    def key(self, relative: str) -> str:
        return f"{self.prefix}{relative.lstrip('/')}"


def parse(url: str, what: str = "location") -> S3Path:
    """Parse `s3://` or `s3a://` URLs; the prefix is treated as a folder."""
    scheme = next((s for s in SCHEMES if url.startswith(s)), None)
    if scheme is None:
        raise UserError(
            f"{what} {url!r} is not an S3 location",
            "write it as s3://BUCKET/PREFIX (s3a://BUCKET/PREFIX is accepted too)",
        )
    bucket, _, prefix = url[len(scheme) :].partition("/")
    if not _BUCKET.match(bucket):
        raise UserError(
            f"{what} {url!r}: {bucket!r} is not a valid S3 bucket name",
            "bucket names are 3-63 characters of lowercase letters, digits, '.' and '-'",
        )
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise UserError(f"{what} {url!r} has an empty folder name ('//')", "remove the extra '/'")
    return S3Path(bucket, f"{prefix}/" if prefix else "")
