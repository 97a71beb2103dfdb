"""Which EU region a cluster's instances run in, when there is no inventory to say so.

Without an inventory, the settings' region is only a guess. A guess that is wrong must
not read as "nothing there": teardown would delete the cluster's global parts (its IAM
role and profile) and report success while its instances keep billing in another region.
So when the named region holds none of the cluster's instances, every other EU region is
asked (one DescribeInstances each, only in that case).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from sparkfab.aws import instances
from sparkfab.aws.session import AwsSession, aws_errors, error_code
from sparkfab.config import Settings
from sparkfab.regions import EU_REGIONS

Say = Callable[[str], None]
# Every state in which an instance exists and may bill (or soon will, or just did).
BILLING_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
# A region this identity may not use (not enabled, or denied by an organisation's policy):
# it cannot hold instances the user could have launched with it.
UNUSABLE_REGION_CODES = frozenset({"AuthFailure", "UnauthorizedOperation", "OptInRequired",
                                   "InvalidClientTokenId"})


@dataclass
class Whereabouts:
    """The cluster's live instances by region; `unchecked`: regions that refused us."""

    found: dict[str, list[str]] = field(default_factory=dict)  # region -> instance ids
    unchecked: dict[str, str] = field(default_factory=dict)  # region -> error code


def instance_ids(settings: Settings, region: str) -> list[str]:
    """The cluster's instances in `region` that exist (any state but terminated)."""
    aws = AwsSession(settings.replace(region=region))
    with aws_errors(region, f"looking for cluster {settings.cluster}'s instances"):
        found = instances.find_instances(aws.client("ec2"), settings.cluster,
                                         states=BILLING_STATES)
    return [str(i["InstanceId"]) for i in found]


def elsewhere(settings: Settings) -> Whereabouts:
    """The cluster's instances in every EU region but the settings' own."""
    where = Whereabouts()
    for region in EU_REGIONS:
        if region == settings.region:
            continue
        try:
            ids = _ids_or_refusal(settings, region)
        except _Unusable as exc:
            where.unchecked[region] = exc.code
            continue
        if ids:
            where.found[region] = ids
    return where


class _Unusable(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _ids_or_refusal(settings: Settings, region: str) -> list[str]:
    try:
        return instance_ids(settings, region)
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ClientError) else exc
        if isinstance(cause, ClientError) and error_code(cause) in UNUSABLE_REGION_CODES:
            raise _Unusable(error_code(cause)) from exc
        raise
