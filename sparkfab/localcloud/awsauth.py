"""moto_server's authorization, given AWS's semantics where moto 5 differs.

With IAM authorization on (principals.py), moto checks each request against its caller's
policies, but some of its checks are not AWS's, and each would make the local cloud deny
what AWS allows (or crash), so the shipped policies could not be what is tested:
- a presigned S3 request (no Authorization header; its signature in the query) fails with a
  KeyError, a 500. AWS checks the query signature, the expiry, and the signer's policies.
  The nodes fetch every staged artifact through URLs the operator presigns.
- HeadBucket is checked as `s3:HeadBucket`, an action that does not exist; AWS checks
  `s3:ListBucket`.
- DeleteObjects is checked as `s3:DeleteObject` on the bucket's ARN; AWS checks it on each
  key. s3a's commit ends in DeleteObjects, and the node role's policy grants DeleteObject on
  the bucket's objects, not on the bucket.
- AssumeRole's trust check crashes (a TypeError, a 500) on a trust policy whose principal is
  a service, as every instance role's is (`ec2.amazonaws.com`). On AWS the EC2 service
  assumes it for the instance; here the watcher does, for IMDS, signing as the cloud's
  admin, the EC2 service's stand-in: it may assume a role that trusts EC2, and no other
  caller may assume a service's role (`role_trusts`).
- the signature is checked over the path as Werkzeug re-encoded it, not as it was sent; a
  key with `=` or `%` in it (s3a's and Spark's partition directories) fails it.
- IAM calls are checked against "*" (no scoped statement matches), and SSM calls too; AWS
  checks the role, instance profile or parameter they name (`iam_resource`,
  `ssm_resource`).
`patch()` fixes them in the moto_server process (motoserver.py). A request with no
signature at all is denied, as AWS denies it on a private bucket.
"""

from __future__ import annotations

import datetime
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

_DATE = "%Y%m%dT%H%M%SZ"
# AWS's longest presigned lifetime (SigV4): 7 days.
MAX_EXPIRES_S = 7 * 24 * 3600


def _without_signature(path: str) -> str:
    """The request's path and query as signed: every parameter but the signature, as sent."""
    base, _, query = path.partition("?")
    kept = [p for p in query.split("&") if p and not p.startswith("X-Amz-Signature=")]
    return base + ("?" + "&".join(kept) if kept else "")


def _raw_path(headers: Any) -> str | None:
    """The path and query exactly as the client sent them, which is what it signed.

    moto signs over the URL Werkzeug rebuilt from the decoded path, where a key's `%3D`
    comes back as `=`: every key with such a character would fail its signature check."""
    environ = getattr(headers, "environ", None) or {}
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return str(raw) if raw else None


def presigned_request_class() -> type:
    """moto's S3IAMRequest, able to authenticate a presigned (query-signed) request."""
    from moto.iam.access_control import (
        CreateAccessKeyFailure,
        S3IAMRequest,
        create_access_key,
    )
    from moto.s3.exceptions import S3AccessDeniedError
    from moto.utilities.utils import get_partition

    class PresignedAwareS3IAMRequest(S3IAMRequest):
        def __init__(self, account_id: str, method: str, path: str, data: dict[str, str],
                     body: bytes, headers: Any, action: str) -> None:
            self._query: dict[str, list[str]] | None = None
            path = _raw_path(headers) or path
            if "Authorization" in headers:
                super().__init__(account_id, method, path, data, body, headers, action)
                return
            query = parse_qs(urlsplit(path).query, keep_blank_values=True)
            if "X-Amz-Credential" not in query or "X-Amz-Signature" not in query:
                raise S3AccessDeniedError()  # anonymous: our buckets are private
            self._query = {k: v for k, v in query.items()}
            self.account_id = account_id
            self._method, self._path, self._data = method, path, data
            self._body, self._headers = body, headers
            try:
                key_id, _date, self._region, self._service, _ = self._param(
                    "X-Amz-Credential").split("/")
            except ValueError:  # not KEY/DATE/REGION/SERVICE/aws4_request
                raise S3AccessDeniedError() from None
            self._action = f"{self._service}:{action[0] if isinstance(action, list) else action}"
            token = self._query.get("X-Amz-Security-Token")
            try:
                self._access_key = create_access_key(
                    account_id=account_id, partition=get_partition(self._region),
                    access_key_id=key_id,
                    headers={"X-Amz-Security-Token": token[0]} if token else {})
            except CreateAccessKeyFailure as exc:
                self._raise_invalid_access_key(exc.reason)
            self._check_expiry()

        def _param(self, name: str) -> str:
            assert self._query is not None
            values = self._query.get(name)
            if not values:
                raise S3AccessDeniedError()
            return values[0]

        def _check_expiry(self) -> None:
            try:
                signed = datetime.datetime.strptime(self._param("X-Amz-Date"), _DATE)
                expires = int(self._param("X-Amz-Expires"))
            except ValueError:
                raise S3AccessDeniedError() from None
            now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            if not 0 < expires <= MAX_EXPIRES_S or now > signed + datetime.timedelta(
                    seconds=expires):
                raise S3AccessDeniedError()  # AWS: 403 "Request has expired"

        def check_signature(self) -> None:
            if self._query is None:
                super().check_signature()
                return
            from botocore.auth import S3SigV4QueryAuth
            from botocore.awsrequest import AWSRequest

            signed_names = self._param("X-Amz-SignedHeaders").split(";")
            headers = {name: self._headers[name] for name in signed_names
                       if name in self._headers}
            request = AWSRequest(method=self._method, url=_without_signature(self._path),
                                 headers=headers)
            request.context["timestamp"] = self._param("X-Amz-Date")
            auth = S3SigV4QueryAuth(self._access_key.create_credentials(), self._service,
                                    self._region, expires=int(self._param("X-Amz-Expires")))
            canonical = auth.canonical_request(request)
            expected = auth.signature(auth.string_to_sign(request, canonical), request)
            if expected != self._param("X-Amz-Signature"):
                self._raise_signature_does_not_match()

    return PresignedAwareS3IAMRequest


def iam_resource(self: Any) -> str:
    """The ARN AWS authorizes an IAM call on: the profile or role it names (with the path
    it is created under), else "*" (the List calls). `self`: moto's IamResponse."""
    data, account = self.data, self.current_account

    def param(name: str) -> str | None:
        value = data.get(name)
        return value[0] if value else None

    path = param("Path") or "/"
    if profile := param("InstanceProfileName"):
        try:
            return str(self.backend.get_instance_profile(profile).arn)
        except Exception:  # moto raises its own NotFound; AWS uses the new profile's ARN
            return f"arn:aws:iam::{account}:instance-profile{path}{profile}"
    if role := param("RoleName"):
        try:
            return str(self.backend.get_role(role).arn)
        except Exception:
            return f"arn:aws:iam::{account}:role{path}{role}"
    return "*"


def ssm_resource(self: Any) -> str:
    """The parameter's ARN (AWS's own public parameters have no account). `self`: moto's
    SimpleSystemManagerResponse."""
    name = json.loads(self.body or "{}").get("Name", "")
    if not name:
        return "*"
    owner = "" if name.startswith("/aws/service/") else self.current_account
    return f"arn:aws:ssm:{self.region}:{owner}:parameter/{name.lstrip('/')}"


EC2_SERVICE = "ec2.amazonaws.com"


def role_trusts(trust_policy: str | dict[str, Any], service: str = EC2_SERVICE) -> bool:
    """Whether the role's trust policy lets `service` assume it."""
    doc = json.loads(trust_policy) if isinstance(trust_policy, str) else trust_policy
    for st in doc.get("Statement", []):
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        services = st.get("Principal", {}).get("Service", []) if isinstance(
            st.get("Principal"), dict) else []
        services = [services] if isinstance(services, str) else services
        if (st.get("Effect") == "Allow" and service in services
                and {"sts:AssumeRole", "sts:*", "*"} & set(actions)):
            return True
    return False


def _deleted_keys(body: bytes) -> list[str]:
    import xmltodict

    objects = xmltodict.parse(body).get("Delete", {}).get("Object", [])
    if not isinstance(objects, list):
        objects = [objects]
    return [str(o["Key"]) for o in objects]


def patch() -> None:
    """Give moto_server's authorization AWS's semantics (see the module's docstring)."""
    import moto.iam.access_control as access_control
    from moto.iam.responses import IamResponse
    from moto.s3 import responses
    from moto.ssm.responses import SimpleSystemManagerResponse

    from sparkfab.localcloud.principals import ADMIN

    if getattr(responses.S3Response, "_sparkfab_patched", False):
        return
    responses.S3Response._sparkfab_patched = True  # type: ignore[attr-defined]
    access_control.S3IAMRequest = presigned_request_class()  # type: ignore[misc]
    responses.ACTION_MAP["BUCKET"]["HEAD"]["DEFAULT"] = "ListBucket"
    trust = access_control.IAMRequestBase._check_role_trust_relationship

    def trusted(self: Any, role_arn: str) -> bool:
        if self._access_key.arn.endswith(f":user/{ADMIN}"):  # the EC2 service's stand-in
            return role_trusts(self.backend.get_role_by_arn(role_arn)
                               .assume_role_policy_document)
        try:
            return bool(trust(self, role_arn))
        except TypeError:  # moto on a service principal: a user is not that service
            return False

    access_control.IAMRequestBase._check_role_trust_relationship = trusted  # type: ignore[method-assign]
    IamResponse._determine_resource = iam_resource  # type: ignore[attr-defined]
    SimpleSystemManagerResponse._determine_resource = ssm_resource  # type: ignore[attr-defined]

    original = responses.S3Response._authenticate_and_authorize_s3_action

    def authorize(self: Any, bucket_name: str | None = None,
                  key_name: str | None = None) -> None:
        if (key_name is None and bucket_name and self.data.get("Action") == "DeleteObject"
                and self.is_delete_keys()):
            # AWS checks DeleteObject on every key named; moto answers a denial with an
            # AccessDenied error per key, as AWS does for the keys it refuses.
            for key in _deleted_keys(self.body) or [""]:
                original(self, bucket_name=bucket_name, key_name=key)
            return
        original(self, bucket_name=bucket_name, key_name=key_name)

    responses.S3Response._authenticate_and_authorize_s3_action = authorize  # type: ignore[method-assign]
