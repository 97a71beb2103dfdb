"""End to end as a user types it, on the local cloud: `fab local-cloud-up`, then
`fab provision --workers 2`, `fab upload-data`, `fab run-job`, `fab teardown --yes`, twice
in the same cloud (nothing may leak from the first run into the second; the second with
one worker, as a smaller cluster is the cheaper check of that), then `fab local-cloud-down`.
Every command is a subprocess of `fab`.

Slow: each run installs Spark and a Python env with TensorFlow on 3 nodes. The job is kept
small (a dozen 64x64 images). The first run's `fab run-job` is the README's, exactly: no
`--weights` (the demo weights `local-cloud-up` staged in the bucket) and every default
(the onnx engine); the second passes small settings and random weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import netcheck
import pytest
import yaml
from conftest import CLOUD_ROOT, PREFIX, REPO, SUBNET, leftovers
from PIL import Image

from sparkfab import demo_weights, inventory, ports, sizing
from sparkfab.aws import tags as T
from sparkfab.aws.iam import names as iam_names
from sparkfab.aws.keys import key_pair_name
from sparkfab.layout import Layout
from sparkfab.localcloud import (
    derived_subnet,
    machines,
    netns,
    principals,
    resources,
    target,
    watcher,
)
from sparkfab.localcloud.mirror import DEFAULT_OUT as MIRROR_DIR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
PREFIX_E = f"{PREFIX}e5"
SUBNET_E = derived_subnet(SUBNET, 5)
CLUSTER = "sparkfab"  # the default: the commands below name no cluster
LABELS = ("apple", "banana", "cherry")
PER_LABEL = 4
WORKERS = {1: 2, 2: 1}  # per run
JOB_FLAGS = {1: (), 2: ("--weights", "random", "-k", "3", "--input-size", "96",
                        "--batch-size", "4", "--images-per-partition", "3")}
FAB = Path(sys.executable).with_name("fab")
TIMES: dict[int, dict[str, float]] = {}


@dataclass
class Cloud:
    env: dict[str, str]
    inv_dir: Path
    settings: dict[str, object]

    def fab(self, *args: str, timeout: float = 1500) -> tuple[subprocess.CompletedProcess[str],
                                                               float]:
        """`fab ARGS` from the repository root, as a user's shell runs it; and its seconds."""
        t0 = time.monotonic()
        out = subprocess.run([str(FAB), *args], cwd=REPO, env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        return out, time.monotonic() - t0

    def client(self, service: str):  # noqa: ANN201 (a boto3 client)
        return boto3.client(service, endpoint_url=str(self.settings["endpoint_url"]),
                            region_name=str(self.settings["region"]),
                            **principals.credentials(target.workdir_for(PREFIX_E, CLOUD_ROOT)))


def _ok(out: subprocess.CompletedProcess[str], what: str) -> str:
    assert out.returncode == 0, f"{what} failed ({out.returncode}):\n{out.stdout[-6000:]}\n" \
        f"{out.stderr[-4000:]}"
    return out.stdout


def _namespaces() -> list[str]:
    return [ns for ns in netns.list_namespaces() if ns.startswith(f"{PREFIX_E}-")]


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60,
           poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """`fab local-cloud-up` with the shared mirror; `fab local-cloud-down` after, always."""
    # A user's shell: no AWS credentials at all, no sparkfab settings but the cloud's.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPARKFAB_"))}
    inv_dir = tmp_path_factory.mktemp("inventory")
    env["SPARKFAB_INVENTORY_DIR"] = str(inv_dir)
    cloud = Cloud(env, inv_dir, {})
    workdir = target.workdir_for(PREFIX_E, CLOUD_ROOT)
    try:
        out, seconds = cloud.fab("local-cloud-up", "--prefix", PREFIX_E, "--subnet", SUBNET_E,
                                 "--mirror", str(REPO / MIRROR_DIR))
        text = _ok(out, "fab local-cloud-up")
        export = next(line.strip() for line in text.splitlines()
                      if line.strip().startswith("export SPARKFAB_CONFIG="))
        config = export.split("=", 1)[1]
        env["SPARKFAB_CONFIG"] = config
        cloud.settings = yaml.safe_load(Path(config).read_text())
        print(f"\nfigure: local-cloud-up: {seconds:.0f}s (staging included)")
        yield cloud
    finally:
        down, seconds = cloud.fab("local-cloud-down", "--prefix", PREFIX_E)
        if down.returncode != 0:  # still remove everything, then fail
            target.down(PREFIX_E, root=CLOUD_ROOT)
        print(f"\nfigure: local-cloud-down: {seconds:.0f}s")
        _ok(down, "fab local-cloud-down")
        assert leftovers(PREFIX_E) == []
        assert target.read_info(workdir) is None
        assert not (workdir / target.SETTINGS_FILE).exists()
        _print_times()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PER_LABEL small JPEGs per label, and one file that only looks like an image."""
    root = tmp_path_factory.mktemp("images")
    for i, label in enumerate(LABELS):
        (root / label).mkdir()
        for j in range(PER_LABEL):
            img = Image.new("RGB", (64, 64), (80 * i, 40 * j, 255 - 60 * i))
            img.save(root / label / f"{label}-{j}.jpg", quality=90)
    (root / LABELS[0] / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _ssh_argv(cloud: Cloud, inv: inventory.Inventory, ip: str) -> list[str]:
    """The system ssh to `ip`, trusting only the host keys provision recorded."""
    return ["ssh", "-i", inv.private_key_path, "-F", "/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"UserKnownHostsFile={inventory.known_hosts_path(CLUSTER, cloud.inv_dir)}",
            f"{inv.ssh_user}@{ip}"]


def _ssh(cloud: Cloud, inv: inventory.Inventory, ip: str, command: str
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_ssh_argv(cloud, inv, ip), command], capture_output=True,
                          text=True, timeout=60)


def _ssh_runner(cloud: Cloud, inv: inventory.Inventory, ip: str) -> netcheck.Runner:
    def run(argv: list[str], stdin: str) -> str:
        out = subprocess.run([*_ssh_argv(cloud, inv, ip), shlex.join(argv)], input=stdin,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout
    return run


def _check_security_groups(cloud: Cloud, inv: inventory.Inventory) -> None:
    """The security group is the firewall: from a host outside it nothing answers, from
    the operator only SSH, between members every port; widening the group opens it to the
    outsider within a poll or two, and revoking closes it again."""
    listening = {}
    for node in inv.nodes:
        out = _ssh(cloud, inv, node.private_ip, "sudo -n ss -Htln")
        assert out.returncode == 0, out.stderr
        listening[node.private_ip] = netcheck.listening_ports(out.stdout)
    master = inv.master.private_ip
    assert {22, ports.MASTER_RPC, ports.MASTER_UI} <= listening[master]
    assert all({22, ports.WORKER_UI} <= listening[n.private_ip] for n in inv.workers)
    targets = sorted((ip, port) for ip, found in listening.items() for port in found)
    python = "/usr/bin/python3"  # the nodes' own, and this machine's for the outsider
    with netcheck.outsider(PREFIX_E, SUBNET_E) as (outsider, _):
        from_outside = netcheck.namespace_runner(outsider)
        seen = netcheck.probe_from(from_outside, python, targets)
        assert [t for t, ok in seen.items() if ok] == []
        seen = netcheck.probe_from(netcheck.local_runner, sys.executable, targets)
        assert sorted(t for t, ok in seen.items() if ok) == [t for t in targets if t[1] == 22]
        for node in inv.nodes:
            others = [t for t in targets if t[0] != node.private_ip]
            seen = netcheck.probe_from(_ssh_runner(cloud, inv, node.private_ip), python,
                                       others)
            assert [t for t, ok in seen.items() if not ok] == [], node.name

        ec2, group = cloud.client("ec2"), inv.security_group_id
        wide = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
        rpc = (master, ports.MASTER_RPC)

        def outsider_reaches_rpc() -> bool:
            # On the bridge an open port answers in a millisecond: a short probe measures
            # how soon the change is enforced, not the probe.
            return netcheck.probe_from(from_outside, python, [rpc], timeout_s=0.1)[rpc]

        t0 = time.monotonic()
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=wide)
        try:
            _until(outsider_reaches_rpc, "the widened group to admit the outsider", 10, 0.1)
            opened_s = time.monotonic() - t0
        finally:
            t0 = time.monotonic()
            ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=wide)
        _until(lambda: not outsider_reaches_rpc(), "the revoke to shut the outsider out", 10,
               0.1)
        closed_s = time.monotonic() - t0
    print(f"\nfigure: security groups: {len(targets)} listening ports on 3 nodes; outsider "
          f"reached none, the operator only 22, members all; authorize took effect in "
          f"{opened_s:.1f}s, revoke in {closed_s:.1f}s (probes every ~0.2 s)")


IMDS = "http://169.254.169.254/latest"
# What any SDK on a node does: a token, the role's name, its credentials; first a GET
# without a token, which IMDSv2-only instances refuse.
IMDS_CREDENTIALS = (
    f"curl -s -o /dev/null -w '%{{http_code}}\\n' {IMDS}/meta-data/instance-id"
    f" && t=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' {IMDS}/api/token)"
    f" && role=$(curl -sf -H \"X-aws-ec2-metadata-token: $t\" "
    f"{IMDS}/meta-data/iam/security-credentials/)"
    f" && echo \"$role\" && curl -sf -H \"X-aws-ec2-metadata-token: $t\" "
    f"{IMDS}/meta-data/iam/security-credentials/\"$role\"")


def _imds_credentials(cloud: Cloud, inv: inventory.Inventory) -> list[str]:
    """The master's instance-profile credentials, fetched on it as its SDKs fetch them; the
    secrets to look for on every node. Never printed, in a failure either."""
    out = _ssh(cloud, inv, inv.master.private_ip, IMDS_CREDENTIALS)
    assert out.returncode == 0, out.stderr
    code, role, body = out.stdout.split("\n", 2)
    assert (code, role) == ("401", iam_names(CLUSTER).role)
    doc = json.loads(body)
    from_sts = doc["Code"] == "Success" and doc["AccessKeyId"].startswith("ASIA")
    assert from_sts  # temporary credentials of the node role, from moto STS
    return [doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"]]


# Run on a node by its job's Python: boto3 with the node's own credentials (IMDS), each
# request's outcome as one word, in order.
IAM_PROBE = """
import sys, boto3
from botocore.exceptions import ClientError
bucket, other, endpoint, region = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region)
def outcome(call, **kw):
    try:
        call(**kw)
        return "allowed"
    except ClientError as exc:
        return exc.response["Error"]["Code"]
print(outcome(s3.put_object, Bucket=bucket, Key="runs/iam-probe/ok", Body=b"ok"),
      outcome(s3.put_object, Bucket=bucket, Key="sparkfab/artifacts/iam-probe", Body=b"x"),
      outcome(s3.list_objects_v2, Bucket=other),
      outcome(s3.put_object, Bucket=other, Key="iam-probe", Body=b"x"))
"""
ALLOWED_BY_THE_ROLE = ["allowed", "AccessDenied", "AccessDenied", "AccessDenied"]


def _check_iam_decides(cloud: Cloud, inv: inventory.Inventory) -> None:
    """IAM decides what a node may do: its role writes its data, not the staged artifacts,
    not another bucket; and widening the role's policy is seen (then undone)."""
    s3, iam = cloud.client("s3"), cloud.client("iam")
    other = f"{inv.bucket}-other"
    s3.create_bucket(Bucket=other, CreateBucketConfiguration={
        "LocationConstraint": str(cloud.settings["region"])})
    python = f"{Layout().python_env}/bin/python"
    argv = [python, "-", inv.bucket, other, str(cloud.settings["endpoint_url"]),
            str(cloud.settings["region"])]
    run = _ssh_runner(cloud, inv, inv.master.private_ip)
    role = iam_names(CLUSTER).role
    try:
        assert run(argv, IAM_PROBE).split() == ALLOWED_BY_THE_ROLE
        wide = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_role_policy(RoleName=role, PolicyName="widened", PolicyDocument=json.dumps(wide))
        try:
            widened = run(argv, IAM_PROBE).split()
        finally:
            iam.delete_role_policy(RoleName=role, PolicyName="widened")
        # The explicit Deny on the artifacts still wins; the other bucket opens.
        assert widened == ["allowed", "AccessDenied", "allowed", "allowed"]
        assert run(argv, IAM_PROBE).split() == ALLOWED_BY_THE_ROLE
    finally:
        s3.delete_object(Bucket=other, Key="iam-probe")
        s3.delete_bucket(Bucket=other)
        s3.delete_object(Bucket=inv.bucket, Key="runs/iam-probe/ok")
    print(f"\nfigure: IAM decides: the node role {role} writes runs/, is denied "
          f"sparkfab/artifacts/ and bucket {other}; with s3:* added to the role, {other} "
          f"opened ({' '.join(widened)}), and closed again once removed")


def _check_no_keys(cloud: Cloud, inv: inventory.Inventory, secrets: list[str]) -> None:
    """No AWS key on any node: not in a file any of them wrote, not in a process's
    environment; and the search does find one that a careless hand writes there."""
    workdir = target.workdir_for(PREFIX_E, CLOUD_ROOT)
    t0 = time.monotonic()
    def disk_and_processes(node: inventory.Node) -> tuple[Path, Path]:
        """The machine's upper layer (all it wrote) and its cgroup (all it runs)."""
        name = watcher.host_name(node.instance_id)
        return (workdir / "nodes" / name / "upper",
                machines.CGROUP_ROOT / netns.Names(PREFIX_E).namespace(name))

    def findings(node: inventory.Node) -> list[str]:
        upper, cgroup = disk_and_processes(node)
        assert upper.is_dir() and machines.cgroup_pids(cgroup)
        return netcheck.key_findings(upper, cgroup, secrets)

    with ThreadPoolExecutor(len(inv.nodes)) as pool:  # greps over gigabytes: all cores
        found = dict(zip((n.name for n in inv.nodes), pool.map(findings, inv.nodes),
                         strict=True))
    assert found == {n.name: [] for n in inv.nodes}
    seconds = time.monotonic() - t0
    master = inv.master
    leak = "/etc/profile.d/sparkfab-test-leak.sh"
    fake = "export AWS_SECRET_ACCESS_KEY=" + "x" * 40  # the shape of a key, not one
    out = _ssh(cloud, inv, master.private_ip,
               f"echo {shlex.quote(fake)} | sudo -n tee {leak} >/dev/null")
    assert out.returncode == 0, out.stderr
    try:
        found = netcheck.key_findings(*disk_and_processes(master), secrets)
        assert [f for f in found if f.endswith(leak)], found
    finally:
        _ssh(cloud, inv, master.private_ip, f"sudo -n rm -f {leak}")
    print(f"\nfigure: no AWS key on {len(inv.nodes)} nodes (files and process environments "
          f"searched in {seconds:.0f}s); a key written by hand was found")


def _check_provisioned(cloud: Cloud, workers: int) -> inventory.Inventory:
    inv = inventory.load(CLUSTER, cloud.inv_dir)
    assert inv is not None
    assert [n.name for n in inv.nodes] == ["master", *(f"worker-{i + 1}" for i in range(workers))]
    assert inv.extra.get("local_cloud"), "the idle guard must know it runs in the local cloud"
    assert len(_namespaces()) == 1 + workers
    for node in inv.nodes:
        out = _ssh(cloud, inv, node.private_ip, "ip -4 -o addr show dev eth0")
        assert out.returncode == 0, out.stderr
        assert f"inet {node.private_ip}/" in out.stdout
    url = f"http://{inv.master.private_ip}:{ports.MASTER_UI}/json/"
    out = _ssh(cloud, inv, inv.master.private_ip, f"curl -sf {url}")
    assert out.returncode == 0, out.stderr
    alive = [w for w in json.loads(out.stdout)["workers"] if w["state"] == "ALIVE"]
    assert sorted(w["host"] for w in alive) == sorted(n.private_ip for n in inv.workers)
    # Each worker offers Spark what its node reports: its type (the default m6i.xlarge,
    # 4 vCPUs, 16 GiB) scaled to this machine (resources.py), less the OS's reserve.
    node = resources.scaled(4, 16384, len(os.sched_getaffinity(0)), resources.host_memory_mb())
    offered = sizing.worker_resources(sizing.NodeFacts(node.cores, node.memory_mb, True))
    assert [(w["cores"], w["memory"]) for w in alive] == \
        [(offered.cores, offered.memory_mb)] * len(alive)
    return inv


def _check_outputs(cloud: Cloud, bucket: str, prefix: str) -> dict[str, object]:
    s3 = cloud.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    keys = {o["Key"][len(prefix) + 1:] for o in listed.get("Contents", [])}
    assert {"manifest.json", "_SUCCESS", "pca_matrix.csv", "errors.csv"} <= keys, keys
    assert any(k.startswith("features.parquet/") for k in keys), keys
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()
    manifest = json.loads(body)
    counts = manifest["counts"]
    assert counts["input"] == counts["ok"] + counts["failed"] == len(LABELS) * PER_LABEL + 1
    assert counts["failed"] == 1
    errors = s3.get_object(Bucket=bucket, Key=f"{prefix}/errors.csv")["Body"].read()
    assert b"truncated.jpg" in errors
    return manifest


def _check_nothing_left(cloud: Cloud) -> None:
    ec2, iam = cloud.client("ec2"), cloud.client("iam")
    live = ec2.describe_instances(Filters=[
        *T.ec2_filter(CLUSTER),
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping",
                                                   "stopped", "shutting-down"]}])
    assert [r for r in live["Reservations"] if r["Instances"]] == []
    assert ec2.describe_security_groups(Filters=T.ec2_filter(CLUSTER))["SecurityGroups"] == []
    assert [k for k in ec2.describe_key_pairs()["KeyPairs"]
            if k["KeyName"] == key_pair_name(CLUSTER)] == []
    names = iam_names(CLUSTER)
    assert names.role not in {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert names.profile not in {p["InstanceProfileName"]
                                 for p in iam.list_instance_profiles()["InstanceProfiles"]}
    assert inventory.load(CLUSTER, cloud.inv_dir) is None
    assert not inventory.known_hosts_path(CLUSTER, cloud.inv_dir).exists()
    # Terminated instances lose their hosts within the watcher's next polls.
    _until(lambda: _namespaces() == [], "the hosts of the terminated instances to go")


@pytest.mark.parametrize("run", [1, 2])
def test_provision_run_job_teardown_as_a_user_types_them(
    cloud: Cloud, images: Path, run: int
) -> None:
    times = TIMES.setdefault(run, {})
    # Whatever the first run did, the second starts from nothing of the cluster's.
    _check_nothing_left(cloud)

    workers = WORKERS[run]
    out, times["provision"] = cloud.fab("provision", "--workers", str(workers))
    _ok(out, f"fab provision --workers {workers}")
    inv = _check_provisioned(cloud, workers)
    bucket = inv.bucket
    assert bucket == cloud.settings["bucket"]

    data = f"s3://{bucket}/images/fruits"
    _ok(cloud.fab("upload-data", str(images), data)[0], "fab upload-data")
    output = f"s3://{bucket}/runs/e2e-{run}"
    out, times["run-job"] = cloud.fab("run-job", "--input", data, "--output", output,
                                      *JOB_FLAGS[run])
    _ok(out, "fab run-job")
    manifest = _check_outputs(cloud, bucket, f"runs/e2e-{run}")
    assert manifest["weights"]["engine"] == "onnx"
    assert manifest["weights"]["executor_model_builds"]
    if run == 1:  # the bucket's weights, staged by local-cloud-up: the demo weights' digest
        demo = hashlib.sha256((REPO / demo_weights.DEFAULT_OUT).read_bytes()).hexdigest()
        assert manifest["weights"]["sha256"] == demo
        assert manifest["weights"]["spec"].startswith(f"s3a://{bucket}/sparkfab/weights/")
        _check_security_groups(cloud, inv)
        _check_no_keys(cloud, inv, _imds_credentials(cloud, inv))
        _check_iam_decides(cloud, inv)
    else:
        assert manifest["pca"]["k"] == 3

    out, times["teardown"] = cloud.fab("teardown", "--yes")
    _ok(out, "fab teardown --yes")
    _check_nothing_left(cloud)
    print(f"\nfigure: run {run}: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))


def _print_times() -> None:
    buf = io.StringIO()
    for run, times in sorted(TIMES.items()):
        buf.write(f"run {run}: " + ", ".join(f"fab {k} {v:.1f}s" for k, v in times.items())
                  + "\n")
    print("\nend-to-end wall times:\n" + buf.getvalue())
