"""The local cloud as a target: moto instances are booted machines, and moto hears of them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CLOUD_ROOT, PREFIX, SUBNET, leftovers, operator_ssh_group

from sparkfab import hostkeys, sizing
from sparkfab.localcloud import Keypair, derived_subnet, netns, resources, target, watcher

pytestmark = pytest.mark.timeout(600)
PREFIX_W = f"{PREFIX}w4"
SUBNET_W = derived_subnet(SUBNET, 4)


# A GET without a token (IMDSv2 required: 401), then the token dance for the instance id.
IMDS_INSTANCE_ID = (
    "curl -s -o /dev/null -w '%{http_code}\\n' http://169.254.169.254/latest/meta-data/instance-id"
    " && t=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60'"
    " http://169.254.169.254/latest/api/token)"
    " && curl -sf -H \"X-aws-ec2-metadata-token: $t\""
    " http://169.254.169.254/latest/meta-data/instance-id")


def _ssh(ip: str, key: Path, known_hosts: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-F", "/dev/null", "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", f"admin@{ip}", command],
        capture_output=True, text=True, timeout=60)


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _namespaces() -> list[str]:
    return [ns for ns in netns.list_namespaces() if ns.startswith(f"{PREFIX_W}-")]


def _state(ec2: Any, iid: str) -> str:
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return str(inst["State"]["Name"])


def _console_keys(ec2: Any, iid: str) -> list[str]:
    return hostkeys.keys_in_console(hostkeys._console_output(ec2, iid))


def test_instances_boot_machines_and_moto_follows_their_power(
    ssh_keypair: Keypair, tmp_path: Path
) -> None:
    workdir = target.workdir_for(PREFIX_W, CLOUD_ROOT)
    info = target.start_watcher(PREFIX_W, SUBNET_W, workdir, print)
    try:
        placement = target.prepare_account(info, print)
        ec2 = info.client("ec2")
        ec2.import_key_pair(KeyName="watcher-test",
                            PublicKeyMaterial=ssh_keypair.public_key.encode())
        group = operator_ssh_group(ec2, placement.subnet_id, info.bridge_ip, "watcher-test")
        launched = ec2.run_instances(
            ImageId=placement.ami_id, MinCount=3, MaxCount=3, InstanceType="m6i.large",
            KeyName="watcher-test", SubnetId=placement.subnet_id, SecurityGroupIds=[group],
            # As provision launches them: IMDSv2 only.
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
            UserData="#!/bin/sh\necho launched-with-user-data > /var/tmp/ud\n",
            InstanceInitiatedShutdownBehavior="terminate")["Instances"]
        ips = {i["InstanceId"]: i["PrivateIpAddress"] for i in launched}
        # moto hands out the subnet's addresses in order, after AWS's 4 reserved ones.
        base = SUBNET_W.rsplit(".", 1)[0]
        assert sorted(ips.values()) == [f"{base}.4", f"{base}.5", f"{base}.6"]

        # Host keys as on AWS: each machine's console output, through moto's API.
        _until(lambda: all(_console_keys(ec2, i) for i in ips), "host keys", 180)
        known = tmp_path / "known_hosts"
        known.write_text("".join(f"{ip} {k}\n" for iid, ip in ips.items()
                                 for k in _console_keys(ec2, iid)))
        for ip in ips.values():
            _until(lambda ip=ip: _ssh(ip, ssh_keypair.private_key, known, "true")
                   .returncode == 0, f"ssh to {ip}", 60)
            out = _ssh(ip, ssh_keypair.private_key, known,
                       "cloud-init status --wait >/dev/null; cat /var/tmp/ud; "
                       "ip -4 -o addr show dev eth0")
            assert out.returncode == 0, out.stderr
            assert "launched-with-user-data" in out.stdout and f"inet {ip}/" in out.stdout
        # Each machine is its type's size, scaled (resources.py): m6i.large, 2 vCPUs and
        # 8 GiB, is 1 core and 2 GiB, as nproc and /proc/meminfo tell on the node.
        size = resources.scaled(2, 8192, len(os.sched_getaffinity(0)), 24 * 1024)
        for ip in ips.values():
            out = _ssh(ip, ssh_keypair.private_key, known, sizing.FACTS_COMMAND)
            assert out.returncode == 0, out.stderr
            facts = sizing.NodeFacts.parse(out.stdout)
            assert (facts.cores, facts.memory_mb) == (size.cores, size.memory_mb)
        # IMDSv2 inside each machine: its own instance id, with a token and not without.
        for iid, ip in ips.items():
            out = _ssh(ip, ssh_keypair.private_key, known, IMDS_INSTANCE_ID)
            assert out.returncode == 0, out.stderr
            assert out.stdout.split() == ["401", iid]
        assert len(_namespaces()) == 3

        # A key the console did not print is refused (a machine re-made at the address).
        wrong = tmp_path / "wrong_known_hosts"
        first = sorted(ips)[0]
        wrong.write_text("".join(f"{ips[first]} {k}\n" for k in
                                 _console_keys(ec2, sorted(ips)[1])))
        refused = _ssh(ips[first], ssh_keypair.private_key, wrong, "true")
        assert refused.returncode == 255 and "verification failed" in refused.stderr

        gone, stopped, self_off = sorted(ips)
        ec2.terminate_instances(InstanceIds=[gone])
        _until(lambda: gone not in json.loads((workdir / watcher.HOSTS_FILE).read_text()),
               "the terminated instance's machine to halt")
        assert _ssh(ips[gone], ssh_keypair.private_key, known, "true").returncode == 255

        ec2.stop_instances(InstanceIds=[stopped])
        _until(lambda: stopped not in json.loads((workdir / watcher.HOSTS_FILE).read_text()),
               "the stopped instance's machine to halt")
        # A stopped instance keeps its disk (EBS), a terminated one does not.
        assert (workdir / "nodes" / watcher.host_name(stopped) / "upper").is_dir()

        # Powering off inside: EC2 terminates it (its shutdown behaviour is `terminate`).
        _ssh(ips[self_off], ssh_keypair.private_key, known, "sudo -n shutdown -h now")
        _until(lambda: _state(ec2, self_off) == "terminated", "moto to show it terminated")
        _until(lambda: not _namespaces(), "every machine to be gone")
        log = (workdir / watcher.LOG_FILE).read_text()
        assert f"instance {self_off}: powered itself off" in log
    finally:
        assert target.stop_watcher(workdir, print)
    assert not netns.pid_alive(info.watcher_pid) and not netns.pid_alive(info.moto_pid)
    assert leftovers(PREFIX_W) == []
    assert not (workdir / watcher.PID_FILE).exists()
    assert target.read_info(workdir) is None


CLONE_SCRIPT = """
import json, sys, time
from pathlib import Path
import sparkfab
from sparkfab.localcloud import target
workdir = target.workdir_for(sys.argv[1])  # .cache/localcloud/<prefix> in this clone
info = target.start_watcher(sys.argv[1], sys.argv[2], workdir, print)
try:
    placement = target.prepare_account(info, print)
    ec2 = info.client("ec2")
    ec2.import_key_pair(KeyName="clone", PublicKeyMaterial=sys.argv[3].encode())
    iid = ec2.run_instances(ImageId=placement.ami_id, MinCount=1, MaxCount=1,
                            InstanceType="m6i.large", KeyName="clone",
                            SubnetId=placement.subnet_id)["Instances"][0]["InstanceId"]
    deadline = time.monotonic() + 180
    while "SSH HOST KEY KEYS" not in ec2.get_console_output(InstanceId=iid).get("Output", ""):
        assert time.monotonic() < deadline, "no host keys on the console"
        time.sleep(1)
    print(json.dumps({"code": sparkfab.__file__, "workdir": str(workdir),
                      "hosts": json.loads((workdir / "hosts.json").read_text())}))
finally:
    target.stop_watcher(workdir, print)
"""


def test_the_local_cloud_runs_from_a_clone_under_tmp(ssh_keypair: Keypair) -> None:
    """Most users keep their clone in a home directory (or /tmp): the machines have root
    filesystems of their own, so nothing mounts over it."""
    from conftest import REPO

    prefix, subnet = f"{PREFIX}t8", derived_subnet(SUBNET, 8)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "sparkfab",
                             "templates", "pyproject.toml"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory(prefix="sparkfab-clone-", dir="/tmp") as tmp:
        clone = Path(tmp)
        for rel in listed:
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, clone / rel)
        out = subprocess.run([sys.executable, "-c", CLONE_SCRIPT, prefix, subnet,
                              ssh_keypair.public_key], cwd=clone, capture_output=True,
                             text=True, timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
        doc = json.loads(next(line for line in out.stdout.splitlines()
                              if line.startswith('{"code"')))
        assert doc["code"].startswith(f"{clone}/") and doc["workdir"].startswith(f"{clone}/")
        assert len(doc["hosts"]) == 1
        assert leftovers(prefix) == []
