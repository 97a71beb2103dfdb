"""The tags that mark a resource as a cluster's: how teardown finds it with no inventory."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

TAG_CLUSTER = "sparkfab:cluster"
TAG_ROLE = "sparkfab:role"  # "master" / "worker" on instances
TAG_CREATED_BY = "created-by"
CREATED_BY = "sparkfab"


def cluster_tags(cluster: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The user's extra tags plus sparkfab's own (which always win)."""
    return {**(extra or {}), TAG_CLUSTER: cluster, TAG_CREATED_BY: CREATED_BY}


def as_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def as_dict(tags: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def spec(resource_type: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """One entry of EC2's TagSpecifications."""
    return {"ResourceType": resource_type, "Tags": as_list(tags)}


def is_ours(tags: Iterable[Mapping[str, Any]] | Mapping[str, str] | None, cluster: str) -> bool:
    found = tags if isinstance(tags, Mapping) else as_dict(tags)
    return found.get(TAG_CLUSTER) == cluster and found.get(TAG_CREATED_BY) == CREATED_BY


def ec2_filter(cluster: str) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]},
            {"Name": f"tag:{TAG_CREATED_BY}", "Values": [CREATED_BY]}]
