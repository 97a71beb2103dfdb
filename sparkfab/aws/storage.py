"""The cluster's S3 bucket: in the cluster's EU region, private, encrypted.

A bucket sparkfab creates carries the cluster tags (then teardown may delete it, and only
with --delete-bucket). An existing bucket of the user's is reused as it is, must be in the
cluster's region (data stays where the user put it), and is never deleted by sparkfab.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from sparkfab.aws import tags as T
from sparkfab.aws.session import error_code
from sparkfab.errors import UserError

Say = Callable[[str], None]
_NOT_FOUND = {"404", "NoSuchBucket", "NotFound"}
_NO_TAGS = {"NoSuchTagSet", "NoSuchTagSetError"}
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def default_bucket_name(cluster: str, account_id: str, region: str) -> str:
    """Globally unique without asking: bucket names are global, account ids are not shared."""
    return f"sparkfab-{cluster}-{account_id}-{region}"


def bucket_region(s3: Any, bucket: str) -> str:
    # us-east-1 answers None; any such bucket is outside the EU and gets refused.
    return s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"


def bucket_tags(s3: Any, bucket: str) -> dict[str, str]:
    try:
        return T.as_dict(s3.get_bucket_tagging(Bucket=bucket)["TagSet"])
    except ClientError as exc:
        if error_code(exc) in _NO_TAGS:
            return {}
        raise


def exists(s3: Any, bucket: str) -> bool:
    """True when the bucket exists and is ours to use; a bucket of another account clashes."""
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except ClientError as exc:
        code = error_code(exc)
        if code in _NOT_FOUND:
            return False
        if code in {"403", "AccessDenied", "Forbidden"}:
            raise UserError(f"bucket {bucket} exists and belongs to someone else (or you may "
                            "not read it)",
                            hint="bucket names are global: set another bucket name") from None
        raise


def ensure_bucket(s3: Any, bucket: str, region: str, cluster: str, versioning: bool,
                  extra_tags: dict[str, str], say: Say) -> bool:
    """Create the bucket when missing (True), or check the existing one (False)."""
    if exists(s3, bucket):
        where = bucket_region(s3, bucket)
        if where != region:
            raise UserError(f"bucket {bucket} is in {where}, the cluster in {region}",
                            hint="use a bucket in the cluster's region (data stays in one EU "
                            "region), or unset bucket to get one made")
        tags = bucket_tags(s3, bucket)
        creator = tags.get(T.TAG_CLUSTER) if tags.get(T.TAG_CREATED_BY) == T.CREATED_BY else None
        if creator == cluster:
            say(f"bucket {bucket}: exists")
        elif creator:
            say(f"bucket {bucket}: exists (created for cluster {creator}: shared; its teardown "
                f"keeps it while cluster {cluster} exists)")
        else:
            say(f"bucket {bucket}: exists (yours: reused, never deleted)")
        return False
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    s3.put_public_access_block(Bucket=bucket,
                               PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
        "BucketKeyEnabled": True,
    }]})
    if versioning:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_tagging(Bucket=bucket, Tagging={
        "TagSet": T.as_list(T.cluster_tags(cluster, extra_tags))})
    say(f"bucket {bucket}: created in {region} (private, encrypted"
        + (", versioned)" if versioning else ")"))
    return True


def empty_and_delete(s3: Any, bucket: str, say: Say) -> int:
    """Delete every object version and delete marker, then the bucket; the count removed."""
    removed = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        batch = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                 for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(batch), 1000):
            chunk = batch[start:start + 1000]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            removed += len(chunk)
            say(f"bucket {bucket}: {removed} object version(s) deleted")
    s3.delete_bucket(Bucket=bucket)
    return removed
