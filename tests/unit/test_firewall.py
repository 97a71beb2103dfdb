"""Security groups rendered as nftables (sparkfab/localcloud/firewall.py): the rules provision
makes, from moto's own state, and (as root) enforced between two real network namespaces."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from sparkfab.aws.network import ensure_security_group
from sparkfab.localcloud import firewall

REGION = "eu-west-3"
OPERATOR = "10.88.0.1/32"


@pytest.fixture
def ec2() -> Iterator[object]:
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def _cluster(ec2: object, workers: int = 2) -> tuple[list[dict], dict[str, dict]]:
    """Instances in provision's security group (SSH from OPERATOR, all between members)."""
    vpc = ec2.create_vpc(CidrBlock="10.88.0.0/24")["Vpc"]["VpcId"]  # type: ignore[attr-defined]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.88.0.0/24")[  # type: ignore[attr-defined]
        "Subnet"]["SubnetId"]
    settings = SimpleNamespace(cluster="fw", tags={})
    gid, _ = ensure_security_group(ec2, settings, vpc, OPERATOR, lambda _: None)  # type: ignore[arg-type]
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=workers + 1,  # type: ignore[attr-defined]
                      MaxCount=workers + 1, SubnetId=subnet, SecurityGroupIds=[gid])
    instances = [i for r in ec2.describe_instances()["Reservations"]  # type: ignore[attr-defined]
                 for i in r["Instances"]]
    return instances, firewall.security_groups(ec2)


def _addresses(rule: str) -> set[str]:
    """Every address a rule's set covers (nft sets hold merged ranges)."""
    inner = rule.split("{", 1)[1].split("}", 1)[0]
    return {str(a) for net in inner.split(",") for a in ipaddress.IPv4Network(net.strip())}


def test_provisions_group_becomes_ssh_from_the_operator_and_all_between_members(
        ec2: object) -> None:
    instances, groups = _cluster(ec2)
    members = firewall.members(instances)
    table = firewall.ruleset(instances[0], groups, members)
    ips = {i["PrivateIpAddress"] for i in instances}
    assert f"ip saddr {{ {OPERATOR} }} tcp dport 22 accept" in table
    members_rule = next(line for line in table.splitlines() if line.strip().endswith(
        "} accept  # " + instances[0]["SecurityGroups"][0]["GroupId"]) and "saddr" in line
        and "dport" not in line)
    assert _addresses(members_rule) == ips
    # Nothing else is admitted; the default egress rule lets everything out.
    ingress = table.split("chain egress")[0]
    assert ingress.count(" accept") == 4  # established, loopback, the two rules
    assert "policy drop" in ingress
    assert "ip daddr { 0.0.0.0/0 } accept" in table


def test_a_rule_follows_moto_and_a_stopped_member_drops_out(ec2: object) -> None:
    instances, groups = _cluster(ec2)
    gid = instances[0]["SecurityGroups"][0]["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[  # type: ignore[attr-defined]
        {"IpProtocol": "tcp", "FromPort": 7077, "ToPort": 7080,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2.stop_instances(InstanceIds=[instances[2]["InstanceId"]])  # type: ignore[attr-defined]
    now = [i for r in ec2.describe_instances()["Reservations"]  # type: ignore[attr-defined]
           for i in r["Instances"]]
    table = firewall.ruleset(now[0], firewall.security_groups(ec2), firewall.members(now))
    assert "ip saddr { 0.0.0.0/0 } tcp dport 7077-7080 accept" in table
    assert instances[2]["PrivateIpAddress"] + "/32" not in table


def test_an_instance_without_a_group_gets_its_vpcs_default_group(ec2: object) -> None:
    vpc = ec2.create_vpc(CidrBlock="10.88.1.0/24")["Vpc"]["VpcId"]  # type: ignore[attr-defined]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.88.1.0/24")[  # type: ignore[attr-defined]
        "Subnet"]["SubnetId"]
    inst = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,  # type: ignore[attr-defined]
                             SubnetId=subnet)["Instances"][0]
    groups = firewall.security_groups(ec2)
    held = firewall.groups_of(inst, groups)
    assert [g["GroupName"] for g in held] == ["default"] and held[0]["VpcId"] == vpc
    table = firewall.ruleset(inst, groups, {})
    assert "no ingress rule" in table and "ip daddr { 0.0.0.0/0 } accept" in table


def test_odd_permissions_admit_nothing_rather_than_everything() -> None:
    inst = {"SecurityGroups": [{"GroupId": "sg-1"}]}
    groups = {"sg-1": {"GroupId": "sg-1", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "not-a-network"}]},
        {"IpProtocol": "tcp", "FromPort": "22; flush ruleset", "ToPort": 22,
         "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
        {"IpProtocol": "gre; drop", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-2 } accept"}]},
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
         "IpRanges": [{"CidrIp": "10.1.0.0/16"}, {"CidrIp": "10.1.2.0/24"}]}]}}
    table = firewall.ruleset(inst, groups, {"sg-2 } accept": ["10.0.0.9"]})
    ingress = table.split("chain egress")[0]
    assert ingress.count(" accept") == 3, ingress  # established, loopback, the udp rule
    # Overlapping ranges are merged (nft refuses overlapping intervals in one set).
    assert "ip saddr { 10.1.0.0/16 } udp dport 53 accept" in ingress


# ---- enforced, between two real namespaces (root) --------------------------------------

LISTENER = """
import socket, sys, time
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(); socks.append(s)
print("ready", flush=True)
time.sleep(120)
"""
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
    print("open")
except OSError:
    print("closed")
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _reaches(client: str, ip: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", client, sys.executable, "-c", CONNECT, ip,
                          str(port)], capture_output=True, text=True, timeout=20)
    return out.stdout.strip() == "open"


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_table_filters_a_real_namespace_and_follows_a_change() -> None:
    tag = secrets.token_hex(3)
    node, outside = f"sffw{tag}n", f"sffw{tag}o"
    node_ip, outside_ip = "10.251.0.2", "10.251.0.3"
    listener = None
    try:
        for ns in (node, outside):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"fw{tag}a", "netns", node, "type", "veth", "peer", "name",
            f"fw{tag}b", "netns", outside)
        for ns, dev, addr in ((node, f"fw{tag}a", node_ip), (outside, f"fw{tag}b", outside_ip)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        inst = {"SecurityGroups": [{"GroupId": "sg-1"}]}
        ssh_only = {"sg-1": {"GroupId": "sg-1", "IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": f"{outside_ip}/32"}]}],
            "IpPermissionsEgress": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}}
        firewall.apply(node, firewall.ruleset(inst, ssh_only, {}))
        listener = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-c",
                                     LISTENER, "22", "7077"], stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        assert _reaches(outside, node_ip, 22)
        assert not _reaches(outside, node_ip, 7077)

        opened = {"sg-1": {**ssh_only["sg-1"], "IpPermissions": [
            *ssh_only["sg-1"]["IpPermissions"],
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-1"}]}]}}
        t0 = time.monotonic()
        firewall.apply(node, firewall.ruleset(inst, opened, {"sg-1": [outside_ip]}))
        assert time.monotonic() - t0 < 1.0
        assert _reaches(outside, node_ip, 7077)
        # The node itself is never filtered from its own loopback.
        assert _reaches(node, "127.0.0.1", 7077)
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        for ns in (node, outside):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
