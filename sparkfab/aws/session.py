"""The one way sparkfab talks to AWS: clients for the settings' region and endpoint.

Credentials come only from the standard AWS chain (environment, ~/.aws profiles, SSO,
an instance role); sparkfab never reads or writes a key itself. The region is checked
against the EU list before a session exists, so a non-EU call cannot be made.
`aws_errors()` turns what AWS and botocore raise into one-line `UserError`s with a hint.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, cached_property
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOError,
    TokenRetrievalError,
    WaiterError,
)

from sparkfab.config import Settings
from sparkfab.errors import UserError
from sparkfab.regions import OPT_IN_REGIONS, require_eu

# Standard retry mode backs off on throttling; a few attempts ride out brief API hiccups.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6},
                        user_agent_extra="sparkfab")

_CREDENTIALS_HINT = (
    "sign in with `aws sso login --profile NAME` and set aws_profile (or AWS_PROFILE), or "
    "export AWS credentials in your shell; never put keys in a sparkfab file"
)
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
_REJECTED = {"InvalidClientTokenId", "UnrecognizedClientException", "AuthFailure",
             "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken"}
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}
_QUOTA = {"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
          "SpotMaxPriceTooLow", "VolumeLimitExceeded", "LimitExceeded",
          "LimitExceededException", "TooManyBuckets"}
_CAPACITY = {"InsufficientInstanceCapacity", "InsufficientCapacity",
             "InsufficientHostCapacity", "InsufficientFreeAddressesInSubnet",
             "Unsupported"}
_AMI = {"InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"}
_OPT_IN = {"OptInRequired"}
# IAM and EC2 (and S3 on AWS, for requests within the account) name the action they
# refused: "... is not authorized to perform: ec2:RunInstances on resource: ...".
_PERFORM = re.compile(r"perform: ([A-Za-z0-9-]+:[A-Za-z0-9*]+)")
# An S3 "Access Denied" may name nothing; the operation then tells which permission it
# needed, where its IAM action has another name than the operation (the rest: s3:<op>).
_S3_OPERATION_ACTIONS = {
    "HeadBucket": "s3:ListBucket", "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket", "ListObjectVersions": "s3:ListBucketVersions",
    "HeadObject": "s3:GetObject", "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject", "CompleteMultipartUpload": "s3:PutObject",
    "DeleteObjects": "s3:DeleteObject",
    "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
}
_S3_OPERATIONS_AS_ACTIONS = {
    "CreateBucket", "DeleteBucket", "GetBucketLocation", "GetBucketTagging",
    "PutBucketTagging", "GetBucketPolicy", "PutBucketPolicy", "PutBucketVersioning",
    "GetObject", "PutObject", "DeleteObject", "AbortMultipartUpload",
}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def client_error(exc: BaseException) -> BaseException:
    """The ClientError inside boto3's S3UploadFailedError (upload_file raises that one, with
    the real error as its context), else `exc` itself."""
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        return exc.__context__
    return exc


def denied_action(exc: ClientError) -> str | None:
    """The IAM action an AccessDenied refused, e.g. "ec2:RunInstances", when it can tell."""
    message = str(exc.response.get("Error", {}).get("Message", ""))
    found = _PERFORM.search(message)
    if found:
        return found.group(1)
    op = exc.operation_name
    if op in _S3_OPERATION_ACTIONS:
        return _S3_OPERATION_ACTIONS[op]
    return f"s3:{op}" if op in _S3_OPERATIONS_AS_ACTIONS else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def translate(exc: Exception, region: str, doing: str = "") -> UserError | None:
    """A UserError for an AWS/botocore failure a user can act on, else None."""
    exc = client_error(exc)  # type: ignore[assignment]
    what = f" while {doing}" if doing else ""
    opt_in = (f" ({region} is an opt-in region: enable it in the account first)"
              if region in OPT_IN_REGIONS else "")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return UserError(f"no AWS credentials found{what}", hint=_CREDENTIALS_HINT)
    if isinstance(exc, (TokenRetrievalError, SSOError)):
        return UserError(f"your AWS SSO session has expired or is missing{what}",
                         hint="run `aws sso login --profile NAME` and try again")
    if isinstance(exc, ProfileNotFound):
        return UserError(f"AWS profile not found: {exc}",
                         hint="check aws_profile / AWS_PROFILE against "
                         "`aws configure list-profiles`")
    if isinstance(exc, NoRegionError):
        return UserError("no AWS region set", hint="set region in sparkfab.yaml")
    if isinstance(exc, EndpointConnectionError):
        return UserError(f"cannot reach AWS{what}: {exc}",
                         hint="check your network, and endpoint_url if you set one")
    if isinstance(exc, WaiterError):
        reason = (exc.last_response or {}).get("Error", {}).get("Message") or str(exc)
        return UserError(f"AWS did not reach the expected state{what}: {reason}",
                         hint="check the instances in the EC2 console; running the same "
                         "command again continues from where it stopped")
    if not isinstance(exc, ClientError):
        return None
    code = error_code(exc)
    # One line whatever AWS sent (a body botocore could not parse arrives whole).
    message = _one_line(exc.response.get("Error", {}).get("Message", "") or str(exc))
    if code in _EXPIRED:
        return UserError(f"your AWS credentials have expired{what}",
                         hint="refresh them (e.g. `aws sso login`) and run again")
    if code in _REJECTED:
        return UserError(f"AWS rejected the credentials{what} ({code}){opt_in}",
                         hint=_CREDENTIALS_HINT)
    if code in _OPT_IN:
        return UserError(f"the account is not subscribed to this service or region{what}",
                         hint=f"enable the region {region} in the AWS console, or pick another")
    # A 403 whose body botocore could not parse keeps only the status as its code.
    if code in _DENIED or (code == "403" and denied_action(exc)):
        hint = ("add it to the policy of the identity you run fab as: `fab operator-policy` "
                "prints every permission sparkfab needs")
        action = denied_action(exc)
        if action:
            # AWS's own text may run on with an encoded authorization message: the action
            # is what the user needs.
            return UserError(f"AWS denied {action}{what}: your identity lacks that "
                             "permission", hint=hint)
        return UserError(f"AWS denied the request{what}: {message}", hint=hint)
    if code in _QUOTA:
        return UserError(f"an AWS quota stops this{what}: {code}: {message}",
                         hint="use fewer workers or smaller types, or ask for a higher quota "
                         "in the Service Quotas console")
    if code in _CAPACITY:
        return UserError(f"AWS has no capacity for this right now{what}: {code}: {message}",
                         hint="try another instance type or region, on-demand instead of "
                         "spot, or again in a few minutes")
    if code in _AMI:
        return UserError(f"the AMI was not found in {region}{what}: {message}",
                         hint="AMI ids differ per region: unset ami to use the Debian 13 "
                         "image, or give an id from this region")
    return UserError(f"AWS error{what}: {code}: {message}",
                     hint="run again; if it persists, the message above names the cause")


@contextmanager
def aws_errors(region: str, doing: str = "") -> Iterator[None]:
    """Re-raise AWS/botocore failures as UserError; UserErrors pass through."""
    try:
        yield
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        err = translate(exc, region, doing)
        if err is None:
            raise
        raise err from exc


@cache
def _boto_session(profile: str | None, region: str) -> boto3.Session:
    # One per process and profile: a session caches the parsed service models, which
    # otherwise costs about half a second per client.
    return boto3.Session(profile_name=profile, region_name=region)


@cache
def _local_cloud_session(region: str, cloud_dir: str) -> boto3.Session:
    # Sign as the local cloud's operator, who holds exactly the shipped operator policy
    # (principals.py; moto's dummies where the cloud has no IAM authorization), so a real
    # key from the user's chain is never sent there.
    from sparkfab.localcloud import principals

    return boto3.Session(region_name=region,
                         **principals.credentials(cloud_dir, principals.OPERATOR))


def forget_sessions() -> None:
    """Drop cached sessions, so the next one reads the credential chain afresh."""
    _boto_session.cache_clear()
    _local_cloud_session.cache_clear()


class AwsSession:
    """boto3 clients for one settings' region, profile and endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.region = require_eu(settings.region)
        with aws_errors(self.region, "opening the AWS session"):
            self._session = (_local_cloud_session(self.region, settings.local_cloud)
                             if settings.local_cloud
                             else _boto_session(settings.aws_profile, self.region))
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            with aws_errors(self.region, f"creating the {service} client"):
                self._clients[service] = self._session.client(
                    service,
                    region_name=self.region,
                    endpoint_url=self.settings.endpoint_url,
                    config=_CLIENT_CONFIG,
                )
        return self._clients[service]

    @cached_property
    def account_id(self) -> str:
        """The caller's account; also the first call, so it fails early on bad credentials."""
        with aws_errors(self.region, "checking your AWS identity"):
            return str(self.client("sts").get_caller_identity()["Account"])
