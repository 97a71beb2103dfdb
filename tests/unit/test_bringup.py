"""The glue between provisioning and the install: host keys, the staged manifest, credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sparkfab import bringup, hostkeys, inventory, staging
from sparkfab.artifacts import Mirror
from sparkfab.aws.session import AwsSession
from sparkfab.config import load_settings
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory, Node

pytest_plugins = ["aws_fixtures"]
ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxjFQOe7PfJl/7CgprUAiZgDljin2eqq7jqYf8uS1cp"
ECDSA = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEm"
CONSOLE = f"""[   10.1] cloud-init[812]: Cloud-init v. 24.1 running 'modules:final'
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJunkBeforeTheBlock root@ip-10-0-0-4
-----BEGIN SSH HOST KEY KEYS-----
{ECDSA} root@ip-10-0-0-4
{ED} root@ip-10-0-0-4
-----END SSH HOST KEY KEYS-----
[   11.0] cloud-init[812]: Cloud-init v. 24.1 finished
"""


def _inv(**kw: Any) -> Inventory:
    nodes = [Node("master", "i-aaa", "m6i.large", "10.0.0.4", "203.0.113.4", "master"),
             Node("worker", "i-bbb", "m6i.large", "10.0.0.5", "203.0.113.5", "worker-1")]
    return Inventory("demo", "eu-west-3", "ubuntu", nodes, **kw)


def test_host_keys_are_read_only_from_the_console_key_block() -> None:
    assert hostkeys.keys_in_console(CONSOLE) == [ECDSA, ED]
    # Before cloud-init prints the block (or half of it), there are no keys yet.
    assert hostkeys.keys_in_console(CONSOLE.split("-----END")[0]) == []
    assert hostkeys.keys_in_console("booting...\n") == []


class _Console:
    def __init__(self, outputs: dict[str, str]) -> None:
        self.outputs = outputs

    def get_console_output(self, InstanceId: str, Latest: bool) -> dict[str, str]:  # noqa: N803
        return {"InstanceId": InstanceId, "Output": self.outputs.get(InstanceId, "")}


def test_console_keys_go_under_the_address_ssh_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inventory, "INVENTORY_DIR", tmp_path)
    inv = _inv()
    ec2 = _Console({"i-aaa": CONSOLE, "i-bbb": CONSOLE.replace(ED, ED[:-4] + "AAAA")})
    path = hostkeys.record(inv, load_settings(env={}), ec2, print)
    lines = path.read_text().splitlines()
    assert lines[:2] == [f"203.0.113.4 {ECDSA}", f"203.0.113.4 {ED}"]
    assert lines[3] == f"203.0.113.5 {ED[:-4]}AAAA" and len(lines) == 4

    inv.ssh_address = "private"
    assert hostkeys.from_console(ec2, inv, print).startswith(f"10.0.0.4 {ECDSA}\n")


def test_an_instance_that_never_prints_its_keys_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostkeys, "CONSOLE_POLL_S", 0.01)
    with pytest.raises(UserError) as err:
        hostkeys.from_console(_Console({"i-aaa": CONSOLE}), _inv(), print, timeout_s=0.05)
    assert "i-bbb" in err.value.message and "i-aaa" not in err.value.message


def test_local_cloud_moto_serves_each_instances_own_console(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.ec2.responses.general import General

    from sparkfab.localcloud import motoserver

    monkeypatch.setattr(General, "get_console_output", General.get_console_output)
    motoserver.patch_moto(tmp_path)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="eu-west-3")
        ids = [i["InstanceId"] for i in ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=2, MaxCount=2)["Instances"]]
        (tmp_path / f"{ids[0]}.log").write_text("booting\n" + CONSOLE)
        inv = _inv()
        inv.nodes[0].instance_id, inv.nodes[1].instance_id = ids
        # Before a machine has printed anything, its console is empty (EC2's answer too).
        assert hostkeys.keys_in_console(hostkeys._console_output(ec2, ids[1])) == []
        assert hostkeys.keys_in_console(hostkeys._console_output(ec2, ids[0])) == [ECDSA, ED]
        (tmp_path / f"{ids[1]}.log").write_text(CONSOLE.replace(ED, ED[:-4] + "BBBB"))
        text = hostkeys.from_console(ec2, inv, print, timeout_s=1, poll_s=0.01)
    assert text.splitlines()[-1].endswith(f"{ED[:-4]}BBBB")


def _mirror(root: Path) -> Mirror:
    root.mkdir()
    mirror = Mirror(root, facts={"spark": "4.0.1", "python": "3.11"})
    for name, data in (("spark", b"spark tarball"), ("wheelhouse", b"wheels")):
        (root / f"{name}.bin").write_bytes(data)
        mirror.add(name, root / f"{name}.bin")
    mirror.save()
    return mirror


@mock_aws
def test_the_bucket_describes_what_was_staged(aws_env: Path) -> None:
    s3 = boto3.client("s3", region_name="eu-west-3")
    s3.create_bucket(Bucket="bkt", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    assert staging.staged_mirror(s3, "bkt") is None
    mirror = _mirror(aws_env / "mirror")
    staging.stage_cluster(s3, "bkt", mirror, say=lambda m: None)
    staged = staging.staged_mirror(s3, "bkt")
    assert staged is not None
    assert staged.files == mirror.files and staged.facts == mirror.facts

    settings = load_settings({"region": "eu-west-3"}, env={})
    downloads, facts = bringup.downloads_for(_inv(bucket="bkt"), settings,
                                             AwsSession(settings), print)
    assert facts == {"spark": "4.0.1", "python": "3.11"}
    assert {d.name: d.digest for d in downloads.values()} == {
        f.name: f.sha512 for f in mirror.files}
    assert all("X-Amz-Signature=" in d.url for d in downloads.values())


def test_a_local_cloud_is_called_with_dummy_credentials_only(
    aws_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the user's chain holds is never sent to the local cloud's moto.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-users-own-key-id")
    settings = load_settings({"region": "eu-west-3", "endpoint_url": "http://10.77.0.1:5000",
                              "local_cloud": str(aws_env)}, env={})
    creds = AwsSession(settings)._session.get_credentials()
    assert creds.access_key == "testing"
    aws = AwsSession(load_settings({"region": "eu-west-3"}, env={}))
    assert aws._session.get_credentials().access_key == "the-users-own-key-id"
    with pytest.raises(UserError, match="local_cloud is set but endpoint_url is not"):
        load_settings({"local_cloud": str(aws_env)}, env={})
