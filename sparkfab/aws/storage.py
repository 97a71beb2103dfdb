"""The cluster's S3 bucket: in the cluster's EU region, private, encrypted, TLS only.

A bucket sparkfab creates carries the cluster tags (then teardown may delete it, and only
with --delete-bucket). An existing bucket of the user's is reused as it is, must be in the
cluster's region (data stays where the user put it), and is never deleted or changed by
sparkfab: what it lacks (public access block, default encryption, a TLS-only policy) is
reported as a warning.
"""

from __future__ import annotations

import json
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


TLS_ONLY_SID = "DenyRequestsWithoutTLS"
_NO_POLICY = {"NoSuchBucketPolicy"}
_NO_BLOCK = {"NoSuchPublicAccessBlockConfiguration"}
_NO_ENCRYPTION = {"ServerSideEncryptionConfigurationNotFoundError"}


def tls_only_statement(bucket: str) -> dict[str, Any]:
    """Deny every request that does not come over TLS (aws:SecureTransport false)."""
    arn = f"arn:aws:s3:::{bucket}"
    return {
        "Sid": TLS_ONLY_SID, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _policy(s3: Any, bucket: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]))
    except ClientError as exc:
        if error_code(exc) in _NO_POLICY:
            return None
        raise


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def denies_plain_http(policy: dict[str, Any] | None, bucket: str) -> bool:
    """True when a statement denies everyone every request without TLS on the objects."""
    for st in _as_list((policy or {}).get("Statement", [])):
        cond = st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
        if (st.get("Effect") == "Deny" and str(cond).lower() == "false"
                and st.get("Principal") in ("*", {"AWS": "*"})
                and {"s3:*", "*"} & set(_as_list(st.get("Action")))
                and {f"arn:aws:s3:::{bucket}/*", "*"} & set(_as_list(st.get("Resource")))):
            return True
    return False


def ensure_tls_only(s3: Any, bucket: str) -> bool:
    """Add the TLS-only statement to the bucket's policy, keeping the rest; True if added."""
    policy = _policy(s3, bucket)
    if denies_plain_http(policy, bucket):
        return False
    doc = policy or {"Version": "2012-10-17", "Statement": []}
    doc["Statement"] = [*_as_list(doc.get("Statement", [])), tls_only_statement(bucket)]
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(doc))
    return True


def harden(s3: Any, bucket: str, *, tls_only: bool = True) -> None:
    """Private, encrypted at rest, and (`tls_only`) unreachable over plain HTTP."""
    s3.put_public_access_block(Bucket=bucket,
                               PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
        "BucketKeyEnabled": True,
    }]})
    if tls_only:
        ensure_tls_only(s3, bucket)


def _lacks(read: Callable[[], Any], absent: set[str]) -> bool | None:
    """True when the setting is absent, None when it cannot be read (no permission)."""
    try:
        read()
        return False
    except ClientError as exc:
        if error_code(exc) in absent:
            return True
        if error_code(exc) in {"AccessDenied", "403"}:
            return None
        raise


def users_bucket_warnings(s3: Any, bucket: str, *, tls_only: bool = True) -> list[str]:
    """What an existing bucket of the user's lacks that a sparkfab bucket has."""
    out = []
    try:
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        open_block = not all(block.get(k) for k in PUBLIC_ACCESS_BLOCK)
    except ClientError as exc:
        if error_code(exc) in {"AccessDenied", "403"}:
            open_block = False
            out.append(f"bucket {bucket}: cannot read its public access block (no permission)")
        elif error_code(exc) in _NO_BLOCK:
            open_block = True
        else:
            raise
    if open_block:
        out.append(f"bucket {bucket}: public access is not fully blocked; nothing stops a "
                   "policy or ACL from publishing the data (`aws s3api "
                   "put-public-access-block`)")
    if _lacks(lambda: s3.get_bucket_encryption(Bucket=bucket), _NO_ENCRYPTION):
        out.append(f"bucket {bucket}: no default encryption; objects written without it are "
                   "stored unencrypted (`aws s3api put-bucket-encryption`)")
    if tls_only:
        try:
            plain = not denies_plain_http(_policy(s3, bucket), bucket)
        except ClientError as exc:
            if error_code(exc) not in {"AccessDenied", "403"}:
                raise
            plain = False
        if plain:
            out.append(f"bucket {bucket}: its policy does not deny requests without TLS "
                       f"(add a Deny on aws:SecureTransport false, as sparkfab's own buckets "
                       "have)")
    return out


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
            # HeadBucket's 403 has no body: a bucket of another account and a missing
            # s3:ListBucket of ours look the same, so the line names both.
            raise UserError(f"bucket {bucket} exists and belongs to someone else, or AWS "
                            "denied s3:ListBucket on it to your identity",
                            hint="bucket names are global: set another bucket name; or add the "
                            "permission (`fab operator-policy` prints all sparkfab needs)"
                            ) from None
        raise


def ensure_bucket(s3: Any, bucket: str, region: str, cluster: str, versioning: bool,
                  extra_tags: dict[str, str], say: Say, *, tls_only: bool = True) -> bool:
    """Create the bucket when missing (True), or check the existing one (False).

    `tls_only` False only for the local cloud, whose moto speaks plain HTTP on a bridge."""
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
        if creator and tls_only and ensure_tls_only(s3, bucket):
            say(f"bucket {bucket}: requests without TLS are now denied (bucket policy)")
        if not creator:
            for warning in users_bucket_warnings(s3, bucket, tls_only=tls_only):
                say(f"warning: {warning}")
        return False
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    harden(s3, bucket, tls_only=tls_only)
    if versioning:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_tagging(Bucket=bucket, Tagging={
        "TagSet": T.as_list(T.cluster_tags(cluster, extra_tags))})
    say(f"bucket {bucket}: created in {region} (private, encrypted"
        + (", TLS only" if tls_only else "") + (", versioned)" if versioning else ")"))
    return True


def _refused(bucket: str, errors: list[dict[str, Any]]) -> None:
    """DeleteObjects answers 200 and lists what it refused: stop there, or the bucket's
    deletion fails later with a BucketNotEmpty that hides the cause."""
    if not errors:
        return
    code, message = errors[0].get("Code", ""), errors[0].get("Message", "")
    if code == "AccessDenied":
        # Each entry names a version: AWS checks s3:DeleteObjectVersion for those.
        raise UserError(f"AWS denied s3:DeleteObjectVersion while emptying bucket {bucket} "
                        f"({len(errors)} object version(s) kept): your identity lacks that "
                        "permission",
                        hint="add it to the policy of the identity you run fab as: `fab "
                        "operator-policy` prints every permission sparkfab needs")
    raise UserError(f"S3 kept {len(errors)} object version(s) of bucket {bucket}: {code}: "
                    f"{message}", hint="run the teardown again; if it persists, empty the "
                    "bucket in the S3 console")


def empty_and_delete(s3: Any, bucket: str, say: Say) -> int:
    """Delete every object version and delete marker, then the bucket; the count removed."""
    removed = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        batch = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                 for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(batch), 1000):
            chunk = batch[start:start + 1000]
            resp = s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            _refused(bucket, resp.get("Errors", []))
            removed += len(chunk)
            say(f"bucket {bucket}: {removed} object version(s) deleted")
    s3.delete_bucket(Bucket=bucket)
    return removed
