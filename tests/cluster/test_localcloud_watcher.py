"""The local cloud as a target: moto instances get real sshd hosts, and lose them."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLOUD_ROOT, PREFIX, SUBNET

from sparkfab.localcloud import Keypair, derived_subnet, netns, target, watcher

pytestmark = pytest.mark.timeout(180)
PREFIX_W = f"{PREFIX}w4"
SUBNET_W = derived_subnet(SUBNET, 4)


def _ssh(ip: str, key: Path, known_hosts: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-F", "/dev/null", "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", f"root@{ip}", command],
        capture_output=True, text=True, timeout=30)


def _until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _namespaces() -> list[str]:
    return [ns for ns in netns.list_namespaces() if ns.startswith(f"{PREFIX_W}-")]


def test_each_running_instance_gets_a_host_until_it_stops(
    ssh_keypair: Keypair, tmp_path: Path
) -> None:
    workdir = target.workdir_for(PREFIX_W, CLOUD_ROOT)
    info = target.start_watcher(PREFIX_W, SUBNET_W, workdir, print)
    try:
        placement = target.prepare_account(info, print)
        ec2 = info.client("ec2")
        ec2.import_key_pair(KeyName="watcher-test",
                            PublicKeyMaterial=ssh_keypair.public_key.encode())
        launched = ec2.run_instances(ImageId=placement.ami_id, MinCount=2, MaxCount=2,
                                     InstanceType="m6i.large", KeyName="watcher-test",
                                     SubnetId=placement.subnet_id)["Instances"]
        ips = {i["InstanceId"]: i["PrivateIpAddress"] for i in launched}
        # moto hands out the subnet's addresses in order, after AWS's 4 reserved ones.
        base = SUBNET_W.rsplit(".", 1)[0]
        assert sorted(ips.values()) == [f"{base}.4", f"{base}.5"]

        lines = target.host_keys(workdir, ips, timeout_s=30)
        known = tmp_path / "known_hosts"
        known.write_text("".join(line + "\n" for line in lines.values()))
        for iid, ip in ips.items():
            assert lines[iid].split()[0] == ip
            out = _ssh(ip, ssh_keypair.private_key, known, "ip -4 -o addr show dev eth0")
            assert out.returncode == 0, out.stderr
            assert f"inet {ip}/24" in out.stdout
        assert len(_namespaces()) == 2

        gone, kept = sorted(ips)
        ec2.terminate_instances(InstanceIds=[gone])
        _until(lambda: gone not in json.loads((workdir / watcher.HOSTS_FILE).read_text()),
               "the terminated instance's host to go")
        assert _ssh(ips[gone], ssh_keypair.private_key, known, "true").returncode == 255
        assert _ssh(ips[kept], ssh_keypair.private_key, known, "true").returncode == 0
        assert (workdir / watcher.KNOWN_HOSTS_FILE).read_text() == lines[kept] + "\n"

        ec2.stop_instances(InstanceIds=[kept])
        _until(lambda: not _namespaces(), "the stopped instance's host to go")
        assert "removed" in (workdir / watcher.LOG_FILE).read_text()
    finally:
        assert target.stop_watcher(workdir, print)
    assert not netns.pid_alive(info.watcher_pid) and not netns.pid_alive(info.moto_pid)
    assert _namespaces() == []
    assert not netns.link_exists(netns.Names(PREFIX_W).bridge)
    assert not (workdir / watcher.PID_FILE).exists()
    assert target.read_info(workdir) is None
