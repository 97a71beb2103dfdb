"""Estimated EC2 cost from the price table in `ec2_prices.json` (one file, dated).

The table is the one list of instance types sparkfab allows: settings validate
against it, and `fab status` multiplies its prices by uptime. Spot nodes are priced at
the current spot price when AWS reports one, else at the on-demand price (an upper bound).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

PRICE_FILE = Path(__file__).with_name("ec2_prices.json")


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    currency: str
    regions: dict[str, dict[str, float]]

    def types_in(self, region: str) -> list[str]:
        return sorted(self.regions.get(region, {}))

    def on_demand(self, region: str, instance_type: str) -> float | None:
        return self.regions.get(region, {}).get(instance_type)


@cache
def price_table() -> PriceTable:
    raw = json.loads(PRICE_FILE.read_text())
    return PriceTable(as_of=raw["as_of"], currency=raw["currency"], regions=raw["regions"])


@dataclass(frozen=True)
class NodeCost:
    hourly: float | None  # None: type not in the table
    so_far: float | None
    basis: str  # "on-demand", "spot" or "unknown"


def hours_between(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds() / 3600.0)


def spot_prices(ec2: Any, instance_types: set[str]) -> dict[tuple[str, str], float]:
    """Latest spot price per (instance type, availability zone); empty when none reported."""
    if not instance_types:
        return {}
    prices: dict[tuple[str, str], tuple[datetime, float]] = {}
    resp = ec2.describe_spot_price_history(
        InstanceTypes=sorted(instance_types),
        ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
        StartTime=datetime.now(timezone.utc),
    )
    for item in resp.get("SpotPriceHistory", []):
        key = (item["InstanceType"], item["AvailabilityZone"])
        stamp = item["Timestamp"]
        if key not in prices or stamp > prices[key][0]:
            prices[key] = (stamp, float(item["SpotPrice"]))
    return {k: v[1] for k, v in prices.items()}


def node_cost(
    region: str,
    instance_type: str,
    running_hours: float,
    spot_price: float | None = None,
) -> NodeCost:
    if spot_price is not None:
        return NodeCost(spot_price, spot_price * running_hours, "spot")
    hourly = price_table().on_demand(region, instance_type)
    if hourly is None:
        return NodeCost(None, None, "unknown")
    return NodeCost(hourly, hourly * running_hours, "on-demand")
