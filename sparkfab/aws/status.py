"""`fab status`: the cluster's instances as AWS reports them, with estimated cost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sparkfab.aws import instances, pricing
from sparkfab.aws.session import AwsSession
from sparkfab.inventory import ROLE_MASTER

SHOWN_STATES = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")


@dataclass(frozen=True)
class NodeStatus:
    role: str
    name: str
    instance_id: str
    instance_type: str
    lifecycle: str  # "on-demand" or "spot"
    state: str
    private_ip: str
    public_ip: str
    uptime_hours: float | None  # None unless running
    cost: pricing.NodeCost


@dataclass(frozen=True)
class ClusterStatus:
    cluster: str
    region: str
    nodes: list[NodeStatus]
    price_as_of: str
    currency: str

    @property
    def hourly(self) -> float:
        return sum(n.cost.hourly or 0.0 for n in self.nodes if n.state == "running")

    @property
    def so_far(self) -> float:
        return sum(n.cost.so_far or 0.0 for n in self.nodes if n.state == "running")

    @property
    def unpriced(self) -> list[str]:
        return [n.instance_id for n in self.nodes
                if n.state == "running" and n.cost.hourly is None]


def cluster_status(aws: AwsSession, now: datetime | None = None) -> ClusterStatus:
    now = now or datetime.now(timezone.utc)
    ec2 = aws.client("ec2")
    found = instances.find_instances(ec2, aws.settings.cluster, states=SHOWN_STATES)
    spot_types = {i["InstanceType"] for i in found
                  if i.get("InstanceLifecycle") == "spot" and i["State"]["Name"] == "running"}
    spot = pricing.spot_prices(ec2, spot_types)
    nodes = []
    for inst in found:
        state = inst["State"]["Name"]
        lifecycle = "spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand"
        uptime = (pricing.hours_between(inst["LaunchTime"], now) if state == "running"
                  else None)
        zone = inst.get("Placement", {}).get("AvailabilityZone", "")
        cost = pricing.node_cost(
            aws.region, inst["InstanceType"], uptime or 0.0,
            spot.get((inst["InstanceType"], zone)) if lifecycle == "spot" else None)
        nodes.append(NodeStatus(
            role=instances.role_of(inst) or "?",
            name=instances.name_of(inst) or "?",
            instance_id=inst["InstanceId"],
            instance_type=inst["InstanceType"],
            lifecycle=lifecycle,
            state=state,
            private_ip=inst.get("PrivateIpAddress", "") or "-",
            public_ip=inst.get("PublicIpAddress", "") or "-",
            uptime_hours=uptime,
            cost=cost,
        ))
    nodes.sort(key=lambda n: (n.role != ROLE_MASTER, n.state == "terminated", n.name))
    table = pricing.price_table()
    return ClusterStatus(aws.settings.cluster, aws.region, nodes, table.as_of, table.currency)


def _uptime(hours: float | None) -> str:
    if hours is None:
        return "-"
    minutes = int(hours * 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _money(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"


def format_status(st: ClusterStatus) -> str:
    if not st.nodes:
        return (f"cluster {st.cluster}: no instances in {st.region} "
                "(not provisioned, or torn down)")
    header = ("ROLE", "NAME", "ID", "TYPE", "MARKET", "STATE", "PRIVATE IP", "PUBLIC IP",
              "UPTIME", f"{st.currency}/H")
    rows = [header] + [
        (n.role, n.name, n.instance_id, n.instance_type, n.lifecycle, n.state, n.private_ip,
         n.public_ip, _uptime(n.uptime_hours),
         _money(n.cost.hourly) if n.state == "running" else "-")
        for n in st.nodes
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    running = sum(1 for n in st.nodes if n.state == "running")
    lines.append("")
    lines.append(
        f"cluster {st.cluster} ({st.region}): {running} running; estimated "
        f"{st.hourly:.4f} {st.currency}/hour now, {st.so_far:.2f} {st.currency} so far "
        f"(instances only, no EBS/S3/traffic; on-demand prices as of {st.price_as_of}, "
        "spot at the current spot price)")
    if st.unpriced:
        lines.append(f"note: no price known for {', '.join(st.unpriced)}; left out of the sums")
    return "\n".join(lines)
