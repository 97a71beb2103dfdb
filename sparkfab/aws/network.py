"""The cluster's VPC choice and security group: SSH from the operator only, nothing public.

Ingress is exactly two rules: TCP 22 from `operator_cidr`, and all traffic from members of
the group itself (Spark's ports between nodes). Anything else found on the group (an old
operator address, a rule added by hand) is revoked, so a re-run also repairs drift.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from botocore.exceptions import ClientError

from sparkfab.aws import tags as T
from sparkfab.aws.session import error_code
from sparkfab.config import Settings
from sparkfab.errors import UserError

SSH_PORT = 22
CHECKIP_URL = "https://checkip.amazonaws.com"

Say = Callable[[str], None]


def security_group_name(cluster: str) -> str:
    return f"sparkfab-{cluster}"


@cache
def lookup_public_ip() -> str:
    """The caller's public address as AWS sees it; asked once per process."""
    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=10) as resp:
            text = resp.read(64).decode().strip()
        return str(ipaddress.ip_address(text))
    except (OSError, ValueError) as exc:
        raise UserError(f"could not look up your public IP at {CHECKIP_URL} ({exc})",
                        hint="set operator_cidr (e.g. 203.0.113.7/32) in sparkfab.yaml") from None


def operator_cidr(settings: Settings) -> str:
    """The network SSH is allowed from: the setting, else this machine's public IP."""
    if settings.operator_cidr:
        return settings.operator_cidr
    addr = ipaddress.ip_address(lookup_public_ip())
    return f"{addr}/{addr.max_prefixlen}"


@dataclass(frozen=True)
class Placement:
    vpc_id: str
    subnet_id: str | None  # None: AWS picks a default subnet of the default VPC


def resolve_placement(ec2: Any, settings: Settings) -> Placement:
    if settings.subnet_id:
        try:
            subnet = ec2.describe_subnets(SubnetIds=[settings.subnet_id])["Subnets"][0]
        except ClientError as exc:
            if error_code(exc).startswith("InvalidSubnetID"):
                raise UserError(
                    f"subnet {settings.subnet_id} not found in {settings.region}",
                    hint="check subnet_id, or unset it to use the default VPC") from None
            raise
        if settings.vpc_id and subnet["VpcId"] != settings.vpc_id:
            raise UserError(f"subnet {settings.subnet_id} is not in vpc {settings.vpc_id}",
                            hint="unset vpc_id: it is read off the subnet")
        return Placement(subnet["VpcId"], settings.subnet_id)
    if settings.vpc_id:
        try:
            ec2.describe_vpcs(VpcIds=[settings.vpc_id])
        except ClientError as exc:
            if error_code(exc).startswith("InvalidVpcID"):
                raise UserError(f"vpc {settings.vpc_id} not found in {settings.region}",
                                hint="check vpc_id, or unset it to use the default VPC") from None
            raise
        subnets = ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": [settings.vpc_id]}])["Subnets"]
        if not subnets:
            raise UserError(f"vpc {settings.vpc_id} has no subnet",
                            hint="create one, or set subnet_id")
        # Prefer a subnet that gives public IPs when SSH goes to the public address.
        subnets.sort(key=lambda s: (not s.get("MapPublicIpOnLaunch"), s["SubnetId"]))
        return Placement(settings.vpc_id, subnets[0]["SubnetId"])
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise UserError(f"the account has no default VPC in {settings.region}",
                        hint="set subnet_id (a subnet with internet access) in sparkfab.yaml")
    return Placement(vpcs[0]["VpcId"], None)


def _desired_rules(group_id: str, cidr: str) -> list[dict[str, Any]]:
    ssh: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT}
    if ipaddress.ip_network(cidr).version == 6:
        ssh["Ipv6Ranges"] = [{"CidrIpv6": cidr, "Description": "sparkfab operator SSH"}]
    else:
        ssh["IpRanges"] = [{"CidrIp": cidr, "Description": "sparkfab operator SSH"}]
    members = {"IpProtocol": "-1", "UserIdGroupPairs": [
        {"GroupId": group_id, "Description": "sparkfab cluster members"}]}
    return [ssh, members]


def _flatten(perms: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """Each (protocol, from, to, source) of a permission list, for set comparison."""
    out: set[tuple[Any, ...]] = set()
    for p in perms:
        proto = str(p.get("IpProtocol"))
        lo, hi = (None, None) if proto == "-1" else (p.get("FromPort"), p.get("ToPort"))
        for r in p.get("IpRanges", []):
            out.add((proto, lo, hi, "cidr", r["CidrIp"]))
        for r in p.get("Ipv6Ranges", []):
            out.add((proto, lo, hi, "cidr6", r["CidrIpv6"]))
        for r in p.get("UserIdGroupPairs", []):
            out.add((proto, lo, hi, "group", r["GroupId"]))
        for r in p.get("PrefixListIds", []):
            out.add((proto, lo, hi, "prefix", r["PrefixListId"]))
    return out


def _unflatten(rules: set[tuple[Any, ...]]) -> list[dict[str, Any]]:
    perms = []
    for proto, lo, hi, kind, source in sorted(rules, key=str):
        p: dict[str, Any] = {"IpProtocol": proto}
        if lo is not None:
            p["FromPort"], p["ToPort"] = lo, hi
        key, inner = {"cidr": ("IpRanges", "CidrIp"), "cidr6": ("Ipv6Ranges", "CidrIpv6"),
                      "group": ("UserIdGroupPairs", "GroupId"),
                      "prefix": ("PrefixListIds", "PrefixListId")}[kind]
        p[key] = [{inner: source}]
        perms.append(p)
    return perms


def ensure_security_group(
    ec2: Any, settings: Settings, vpc_id: str, cidr: str, say: Say
) -> tuple[str, bool]:
    """The cluster's group id (created when missing, rules reconciled); True if created."""
    name = security_group_name(settings.cluster)
    found = ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}],
    )["SecurityGroups"]
    created = False
    if found:
        group = found[0]
        if not T.is_ours(group.get("Tags"), settings.cluster):
            raise UserError(
                f"a security group named {name} already exists in {vpc_id} and was not "
                f"created by sparkfab for cluster {settings.cluster}",
                hint="choose another cluster name, or delete/rename that group")
        group_id = group["GroupId"]
        say(f"security group {group_id} ({name}): exists")
    else:
        group_id = ec2.create_security_group(
            GroupName=name,
            Description=f"sparkfab cluster {settings.cluster}: SSH from operator, "
            "all traffic between members",
            VpcId=vpc_id,
            TagSpecifications=[T.spec("security-group", T.cluster_tags(
                settings.cluster, settings.tags))],
        )["GroupId"]
        group = {"IpPermissions": []}
        created = True
        say(f"security group {group_id} ({name}): created")

    have = _flatten(group.get("IpPermissions", []))
    want = _flatten(_desired_rules(group_id, cidr))
    extra, missing = have - want, want - have
    if extra:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=_unflatten(extra))
        say(f"security group {group_id}: revoked {len(extra)} rule(s) that were not "
            f"sparkfab's: {', '.join(str(r[4]) for r in sorted(extra, key=str))}")
    if missing:
        desired = [p for p in _desired_rules(group_id, cidr) if _flatten([p]) & missing]
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=desired)
        if not created:
            say(f"security group {group_id}: SSH allowed from {cidr}")
    return group_id, created


def delete_security_group(ec2: Any, group_id: str) -> bool:
    """Delete; False when it is already gone."""
    try:
        ec2.delete_security_group(GroupId=group_id)
        return True
    except ClientError as exc:
        if error_code(exc) == "InvalidGroup.NotFound":
            return False
        raise
