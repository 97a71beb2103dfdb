"""Which moto instances the local cloud's watcher gives a host (moto in-process, no root)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import boto3
from moto import mock_aws

from sparkfab.localcloud import watcher

pytest_plugins = ["aws_fixtures"]
SUBNET = "10.77.9.0/24"


@mock_aws
def test_running_instances_of_the_subnet_with_an_imported_key_get_a_host(
    aws_env: Path
) -> None:
    ec2 = boto3.client("ec2", region_name="eu-west-3")
    ami = ec2.register_image(Name="local")["ImageId"]
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    ours = ec2.create_subnet(VpcId=vpc, CidrBlock=SUBNET)["Subnet"]["SubnetId"]
    other = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.10.0/24")["Subnet"]["SubnetId"]
    key = (aws_env / "id_ed25519.pub").read_text().strip()  # aws_env's operator key
    ec2.import_key_pair(KeyName="k", PublicKeyMaterial=key.encode())

    def launch(subnet: str, **kw: object) -> str:
        return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, SubnetId=subnet,
                                 **kw)["Instances"][0]["InstanceId"]

    hosted = launch(ours, KeyName="k")
    launch(other, KeyName="k")  # another network: not this cloud's
    keyless = launch(ours)  # nothing to authorize: no host, and it says so
    stopped = launch(ours, KeyName="k")
    ec2.stop_instances(InstanceIds=[stopped])
    said: list[str] = []

    wanted = watcher.wanted_instances(ec2, ipaddress.IPv4Network(SUBNET), said.append)
    assert list(wanted) == [hosted]
    assert wanted[hosted].public_key.split()[:2] == key.split()[:2]
    assert ipaddress.IPv4Address(wanted[hosted].ip) in ipaddress.IPv4Network(SUBNET)
    assert any(keyless in line and "no imported key pair" in line for line in said)

    ec2.terminate_instances(InstanceIds=[hosted])
    assert watcher.wanted_instances(ec2, ipaddress.IPv4Network(SUBNET), said.append) == {}


def test_local_cloud_down_forgets_only_the_clusters_that_lived_in_it(tmp_path: Path) -> None:
    from sparkfab import inventory
    from sparkfab.inventory import Inventory
    from sparkfab.localcloud import target

    here, elsewhere = "http://10.77.0.1:5000", "http://10.77.1.1:5000"
    inventory.save(Inventory("left", "eu-west-3", "root", endpoint_url=here), tmp_path)
    inventory.known_hosts_path("left", tmp_path).write_text("10.77.0.4 ssh-ed25519 AAAA\n")
    inventory.save(Inventory("other", "eu-west-3", "root", endpoint_url=elsewhere), tmp_path)
    inventory.save(Inventory("aws", "eu-west-1", "ubuntu"), tmp_path)
    said: list[str] = []
    assert target.forget_clusters(here, said.append, tmp_path) == ["left"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aws.json", "other.json"]
    assert "no `fab teardown`" in said[0]
