"""Security groups as a firewall: moto's rules enforced on each machine, as EC2 does.

EC2 applies an instance's security groups at its network interface, outside the instance,
statefully: what a rule admits may be answered, and replies to the instance's own
connections come back whatever the ingress rules say. Here each machine's network namespace
gets one nftables table (`inet sparkfab_sg`) rendered from moto's state: ingress and egress
rules by CIDR and by source group (a group's members are the private IPs of the running
instances holding it), conntrack for the replies, loopback free. The watcher re-renders it
on every poll and applies it when it differs, so an authorize or revoke takes effect within
a second; it is in place before the machine boots, and the machine runs without
CAP_NET_ADMIN (machines.py), so nothing inside can change it, as nothing inside an EC2
instance can change its security group.

On EC2 the instance metadata service (169.254.169.254) is never filtered by security
groups; here it listens on the node's own loopback (imds.py), which the table leaves open.

Bridge-level filtering would sit closer to EC2's wiring, but this kernel has no conntrack
for the bridge family (`ct state` there fails with "Protocol error"), and security groups
are stateful: the inet family inside the namespace is the stateful place.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

TABLE = "sparkfab_sg"
_GROUP_ID = re.compile(r"^sg-[0-9a-z]+$")
_PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp",
              "1": "icmp", "icmpv6": "icmpv6", "58": "icmpv6"}


class FirewallError(RuntimeError):
    pass


def members(instances: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Group id -> private IPs of the running instances that hold it (a group-pair source)."""
    out: dict[str, list[str]] = {}
    for inst in instances:
        ip = inst.get("PrivateIpAddress")
        if inst.get("State", {}).get("Name") != "running" or not ip:
            continue
        for group in inst.get("SecurityGroups", []):
            out.setdefault(group["GroupId"], []).append(ip)
    return {gid: sorted(set(ips), key=ipaddress.IPv4Address) for gid, ips in out.items()}


def _match(perm: Mapping[str, Any]) -> str | None:
    """The protocol/port part of one permission as nft matches; None if not expressible."""
    proto = str(perm.get("IpProtocol", "")).lower()
    if proto in ("-1", "all"):
        return ""
    name = _PROTOCOLS.get(proto)
    if name is None:
        return f"meta l4proto {int(proto)}" if proto.isdigit() else None
    try:
        lo = None if perm.get("FromPort") is None else int(perm["FromPort"])
        hi = None if perm.get("ToPort") is None else int(perm["ToPort"])
    except (TypeError, ValueError):
        return None
    if name in ("tcp", "udp"):
        if lo is None or lo < 0:
            return f"meta l4proto {name}"
        return f"{name} dport {lo}" if hi in (None, lo) else f"{name} dport {lo}-{hi}"
    # ICMP: FromPort is the type (-1: any).
    if lo is None or lo < 0:
        return f"meta l4proto {name}"
    return f"{name} type {lo}"


def _sources(perm: Mapping[str, Any], group_members: Mapping[str, list[str]]
             ) -> tuple[list[str], list[str]]:
    """The permission's IPv4 and IPv6 sources (or destinations, for egress), validated."""
    v4: set[str] = set()
    v6: set[str] = set()
    # A range that does not parse admits nothing (closed, not open, when in doubt).
    for r in perm.get("IpRanges", []):
        with contextlib.suppress(ValueError, KeyError):
            v4.add(str(ipaddress.IPv4Network(r["CidrIp"], strict=False)))
    for r in perm.get("Ipv6Ranges", []):
        with contextlib.suppress(ValueError, KeyError):
            v6.add(str(ipaddress.IPv6Network(r["CidrIpv6"], strict=False)))
    for r in perm.get("UserIdGroupPairs", []):
        gid = str(r.get("GroupId", ""))
        if _GROUP_ID.match(gid):
            v4.update(f"{ip}/32" for ip in group_members.get(gid, []))
    # nft refuses overlapping intervals in one set: merge them first.
    return ([str(n) for n in ipaddress.collapse_addresses(map(ipaddress.IPv4Network, v4))],
            [str(n) for n in ipaddress.collapse_addresses(map(ipaddress.IPv6Network, v6))])


def _rules(direction: str, groups: Iterable[Mapping[str, Any]],
           group_members: Mapping[str, list[str]]) -> list[str]:
    field, addr = (("IpPermissions", "saddr") if direction == "ingress"
                   else ("IpPermissionsEgress", "daddr"))
    lines: list[str] = []
    for group in groups:
        gid = str(group.get("GroupId", ""))
        if not _GROUP_ID.match(gid):
            continue
        for perm in group.get(field, []):
            match = _match(perm)
            if match is None:
                continue
            v4, v6 = _sources(perm, group_members)
            tail = f" {match}" if match else ""
            if v4:
                lines.append(f"ip {addr} {{ {', '.join(v4)} }}{tail} accept  # {gid}")
            if v6:
                lines.append(f"ip6 {addr} {{ {', '.join(v6)} }}{tail} accept  # {gid}")
    return lines


def groups_of(instance: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]]
              ) -> list[Mapping[str, Any]]:
    """The groups that filter the instance: those it holds, else its VPC's `default` group
    (EC2 gives an instance launched without one the default group; moto records none).
    A group the instance names that is gone contributes nothing (EC2 would not let it be
    deleted while in use)."""
    named = [g.get("GroupId") for g in instance.get("SecurityGroups", [])]
    if named:
        return [groups[gid] for gid in named if gid in groups]
    return [g for g in groups.values()
            if g.get("GroupName") == "default" and g.get("VpcId") == instance.get("VpcId")]


def ruleset(instance: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]],
            group_members: Mapping[str, list[str]]) -> str:
    """The nft table for one instance: its security groups' rules, and nothing else open.

    `groups` is moto's describe_security_groups by id.
    """
    held = groups_of(instance, groups)
    ingress = _rules("ingress", held, group_members)
    egress = _rules("egress", held, group_members)
    indent = "\n        "
    return f"""\
table inet {TABLE} {{
    chain ingress {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname "lo" accept
        {indent.join(ingress) or "# no ingress rule: nothing is admitted"}
    }}
    chain egress {{
        type filter hook output priority filter; policy drop;
        ct state established,related accept
        oifname "lo" accept
        {indent.join(egress) or "# no egress rule: nothing leaves"}
    }}
}}
"""


def apply(namespace: str, table: str) -> None:
    """Replace the namespace's security-group table with `table`, atomically (one nft
    transaction: no moment with the old rules gone and the new ones not yet in)."""
    script = f"table inet {TABLE}\ndelete table inet {TABLE}\n{table}"
    proc = subprocess.run(["nsenter", f"--net=/run/netns/{namespace}", "nft", "-f", "-"],
                          input=script, capture_output=True, text=True, timeout=30,
                          check=False)
    if proc.returncode != 0:
        raise FirewallError(f"nft in {namespace} failed: {proc.stderr.strip()}")


def security_groups(ec2: Any) -> dict[str, dict[str, Any]]:
    """Every security group moto has, by id."""
    out: dict[str, dict[str, Any]] = {}
    for page in ec2.get_paginator("describe_security_groups").paginate():
        for group in page["SecurityGroups"]:
            out[group["GroupId"]] = group
    return out
