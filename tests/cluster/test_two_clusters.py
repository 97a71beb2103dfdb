"""Two clusters in one local cloud, every command a `fab` subprocess as a user types it.

Cluster `a` (1 master + 1 worker, --no-install, its own bucket) and cluster `b` (1 master
+ 2 workers, installed) share one moto account and one bridge. Then:
1. `fab teardown --cluster a --yes --delete-bucket`: everything of `a` goes (instances,
   their hosts, bucket); every resource of `b` reads back unchanged in moto, its hosts
   answer SSH and its master still lists both workers ALIVE.
2. `fab provision --cluster b --workers 1` while an application runs tasks on both of
   b's workers: worker-2 is decommissioned and drained (the application finishes with the
   right result), stopped and terminated; the master lists exactly 1 ALIVE worker.
3. `fab teardown --cluster b` leaves nothing.

One install (b's) serves both checks; the application is a few sleeping tasks, not the job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from conftest import CLOUD_ROOT, PREFIX, REPO, SUBNET

from sparkfab import inventory, ports, spark
from sparkfab.aws import iam as iam_mod
from sparkfab.aws import operator_policy
from sparkfab.aws import tags as T
from sparkfab.localcloud import derived_subnet, netns, principals, target
from sparkfab.localcloud.mirror import DEFAULT_OUT as MIRROR_DIR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
PREFIX_T = f"{PREFIX}i7"
SUBNET_T = derived_subnet(SUBNET, 7)
FAB = Path(sys.executable).with_name("fab")
LIVE = ["pending", "running", "stopping", "stopped", "shutting-down"]
# The application running during the shrink: 8 tasks of SLEEP_S on 2 workers of 2 cores.
TASKS, SLEEP_S = 8, 20
APP = textwrap.dedent(f"""\
    import time
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName("drain-check").getOrCreate()
    rdd = spark.sparkContext.parallelize(range({TASKS}), {TASKS})
    print("drain-check result", rdd.map(lambda x: time.sleep({SLEEP_S}) or x * x).sum())
    spark.stop()
""")
APP_RESULT = f"drain-check result {sum(x * x for x in range(TASKS))}"


@dataclass
class Cloud:
    env: dict[str, str]
    inv_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)

    def fab(self, *args: str, timeout: float = 1500) -> str:
        """`fab ARGS` from the repository root; its output, after checking it succeeded."""
        t0 = time.monotonic()
        out = subprocess.run([str(FAB), *args], cwd=REPO, env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        self.times[" ".join(args[:5])] = time.monotonic() - t0
        assert out.returncode == 0, (f"fab {' '.join(args)} failed ({out.returncode}):\n"
                                     f"{out.stdout[-6000:]}\n{out.stderr[-4000:]}")
        return out.stdout

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=str(self.settings["endpoint_url"]),
                            region_name=str(self.settings["region"]),
                            **principals.credentials(str(self.settings["local_cloud"])))

    def inventory(self, cluster: str) -> inventory.Inventory:
        inv = inventory.load(cluster, self.inv_dir)
        assert inv is not None, f"no inventory for {cluster}"
        return inv

    def ssh(self, cluster: str, ip: str, command: str, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """The system ssh, trusting only the host keys provision recorded for `cluster`."""
        inv = self.inventory(cluster)
        return subprocess.run(
            ["ssh", "-i", inv.private_key_path, "-F", "/dev/null", "-o", "BatchMode=yes",
             "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
             "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
             "-o", f"UserKnownHostsFile={inventory.known_hosts_path(cluster, self.inv_dir)}",
             f"{inv.ssh_user}@{ip}", command],
            capture_output=True, text=True, timeout=timeout)

    def master_json(self, cluster: str) -> dict[str, Any]:
        inv = self.inventory(cluster)
        out = self.ssh(cluster, inv.master.private_ip,
                       f"curl -sf --max-time 5 {spark.master_json_url(inv)}")
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))


def _namespaces() -> list[str]:
    return [ns for ns in netns.list_namespaces() if ns.startswith(f"{PREFIX_T}-")]


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _alive(doc: dict[str, Any]) -> list[str]:
    return sorted(w["host"] for w in doc.get("workers", []) if w["state"] == "ALIVE")


def _snapshot(cloud: Cloud, cluster: str) -> dict[str, Any]:
    """Every resource of `cluster` in moto, read back by tag and name."""
    ec2, iam, s3 = cloud.client("ec2"), cloud.client("iam"), cloud.client("s3")
    res = ec2.describe_instances(Filters=T.ec2_filter(cluster))["Reservations"]
    names = iam_mod.names(cluster)
    inv = cloud.inventory(cluster)
    return {
        "instances": sorted((i["InstanceId"], i["State"]["Name"], i["PrivateIpAddress"])
                            for r in res for i in r["Instances"]),
        "groups": sorted((g["GroupId"], str(g["IpPermissions"])) for g in
                         ec2.describe_security_groups(Filters=T.ec2_filter(cluster))
                         ["SecurityGroups"]),
        "key_pairs": sorted(k["KeyName"] for k in ec2.describe_key_pairs(
            Filters=T.ec2_filter(cluster))["KeyPairs"]),
        "role_policy": iam.get_role_policy(RoleName=names.role,
                                           PolicyName=names.policy)["PolicyDocument"],
        "profile": [r["RoleName"] for r in iam.get_instance_profile(
            InstanceProfileName=names.profile)["InstanceProfile"]["Roles"]],
        "bucket_objects": s3.list_objects_v2(Bucket=inv.bucket).get("KeyCount"),
        "inventory": inv.to_dict(),
    }


def _nothing_of(cloud: Cloud, cluster: str) -> None:
    ec2, iam = cloud.client("ec2"), cloud.client("iam")
    live = ec2.describe_instances(Filters=[
        *T.ec2_filter(cluster), {"Name": "instance-state-name", "Values": LIVE}])
    assert [i for r in live["Reservations"] for i in r["Instances"]] == []
    assert ec2.describe_security_groups(Filters=T.ec2_filter(cluster))["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=T.ec2_filter(cluster))["KeyPairs"] == []
    assert iam_mod.find_roles(iam, cluster) == [] and iam_mod.find_profiles(iam, cluster) == []
    assert inventory.load(cluster, cloud.inv_dir) is None


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """`fab local-cloud-up` with the shared mirror; `fab local-cloud-down` after, always."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPARKFAB_"))}
    inv_dir = tmp_path_factory.mktemp("inventory")
    env["SPARKFAB_INVENTORY_DIR"] = str(inv_dir)
    cloud = Cloud(env, inv_dir)
    t0 = time.monotonic()
    try:
        text = cloud.fab("local-cloud-up", "--prefix", PREFIX_T, "--subnet", SUBNET_T,
                         "--mirror", str(REPO / MIRROR_DIR))
        config = next(line.strip() for line in text.splitlines()
                      if line.strip().startswith("export SPARKFAB_CONFIG=")).split("=", 1)[1]
        env["SPARKFAB_CONFIG"] = config
        cloud.settings = yaml.safe_load(Path(config).read_text())
        yield cloud
    finally:
        try:
            cloud.fab("local-cloud-down", "--prefix", PREFIX_T)
        finally:
            if _namespaces() or target.read_info(target.workdir_for(PREFIX_T, CLOUD_ROOT)):
                target.down(PREFIX_T, root=CLOUD_ROOT)
        assert _namespaces() == []
        print("\nfigure: two clusters in one local cloud: "
              + ", ".join(f"fab {k} {v:.0f}s" for k, v in cloud.times.items())
              + f"; module {time.monotonic() - t0:.0f}s")


@pytest.fixture(scope="module")
def clusters(cloud: Cloud) -> Cloud:
    """`a`: 1 worker, not installed, a bucket of its own; `b`: 2 workers, installed."""
    bucket = f"{PREFIX_T}-a-data"
    # A name outside sparkfab's: the operator needs the policy for it, as a user on AWS
    # attaches what `fab operator-policy --bucket NAME` prints (IAM decides in this cloud).
    cloud.client("iam").put_user_policy(
        UserName=principals.OPERATOR, PolicyName=f"sparkfab-bucket-{bucket}",
        PolicyDocument=json.dumps(operator_policy.document(bucket)))
    cloud.fab("provision", "--cluster", "a", "--workers", "1", "--no-install",
              "--bucket", bucket)
    cloud.fab("provision", "--cluster", "b", "--workers", "2")
    assert len(_namespaces()) == 5
    return cloud


def test_teardown_of_a_leaves_b_untouched_and_running(clusters: Cloud) -> None:
    cloud = clusters
    a, b = cloud.inventory("a"), cloud.inventory("b")
    assert a.bucket != b.bucket
    cloud.client("s3").put_object(Bucket=a.bucket, Key="images/a.jpg", Body=b"a's data")
    before = _snapshot(cloud, "b")
    assert [state for _, state, _ in before["instances"]] == ["running"] * 3
    assert _alive(cloud.master_json("b")) == sorted(n.private_ip for n in b.workers)
    # Each cluster's security group admits its own members (and the operator's SSH) only:
    # b's worker reaches every port of b's master, and not a's master's sshd, which
    # answers the operator (a is not installed: this machine cannot log in there).
    b_ports = [(b.master.private_ip, p) for p in (ports.MASTER_RPC, ports.MASTER_UI, 22)]
    a_ssh = (a.master.private_ip, 22)
    assert _reachable(cloud, "b", b.workers[0].private_ip, [*b_ports, a_ssh]) == b_ports

    out = cloud.fab("teardown", "--cluster", "a", "--yes", "--delete-bucket")
    assert f"bucket {a.bucket}: deleted" in out
    _nothing_of(cloud, "a")
    assert a.bucket not in {x["Name"] for x in cloud.client("s3").list_buckets()["Buckets"]}
    _until(lambda: len(_namespaces()) == 3, "the hosts of a's instances to go")

    assert _snapshot(cloud, "b") == before
    for node in b.nodes:
        r = cloud.ssh("b", node.private_ip, "cat /proc/loadavg")
        assert r.returncode == 0, f"{node.name}: {r.stderr}"
    assert _alive(cloud.master_json("b")) == sorted(n.private_ip for n in b.workers)


def _reachable(cloud: Cloud, cluster: str, ip: str, targets: list[tuple[str, int]]
               ) -> list[tuple[str, int]]:
    """Which of `targets` accept a TCP connection from the node at `ip` (2 s each)."""
    probes = "; ".join(f"timeout 2 bash -c '</dev/tcp/{host}/{port}' 2>/dev/null "
                       f"&& echo {host}:{port}" for host, port in targets)
    out = cloud.ssh(cluster, ip, f"{probes}; true")
    assert out.returncode == 0, out.stderr
    return [t for t in targets if f"{t[0]}:{t[1]}" in out.stdout.split()]


def _submit_app(cloud: Cloud, cluster: str) -> subprocess.Popen[str]:
    """The application, submitted as a user submits one: `fab submit` from this machine."""
    app = cloud.inv_dir / "drain_check.py"
    app.write_text(APP)
    return subprocess.Popen([str(FAB), "submit", str(app), "--cluster", cluster], cwd=REPO,
                            env=cloud.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_shrink_drains_and_removes_a_worker_while_an_application_runs(clusters: Cloud) -> None:
    cloud = clusters
    before = cloud.inventory("b")
    worker_2 = next(n for n in before.nodes if n.name == "worker-2")
    app = _submit_app(cloud, "b")
    try:
        def running_on_both() -> bool:
            workers = cloud.master_json("b").get("workers", [])
            return sum(w["state"] == "ALIVE" and w["coresused"] > 0 for w in workers) == 2

        _until(running_on_both, "the application's executors on both workers", 180)
        out = cloud.fab("provision", "--cluster", "b", "--workers", "1")
        app_out, _ = app.communicate(timeout=600)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0, app_out[-4000:]
    assert APP_RESULT in app_out, "the application lost no work to the shrink"

    label = f"worker-2 ({worker_2.instance_id})"
    assert f"shrinking cluster b to 1 worker(s): removing {label}" in out
    assert "worker-2: decommissioned: no new executors go there; waiting for 1 executor(s)" \
        in out
    assert "worker-2: drained in" in out and "worker-2: Spark worker stopped" in out
    assert f"removed: {label}; cluster b now has 1 worker(s)" in out

    ec2 = cloud.client("ec2")
    state = ec2.describe_instances(InstanceIds=[worker_2.instance_id])["Reservations"][0][
        "Instances"][0]["State"]["Name"]
    assert state == "terminated"
    after = cloud.inventory("b")
    assert [n.name for n in after.nodes] == ["master", "worker-1"]
    worker_1 = after.workers[0]
    assert _alive(cloud.master_json("b")) == [worker_1.private_ip]
    _until(lambda: len(_namespaces()) == 2, "the host of the terminated worker to go")

    cloud.fab("teardown", "--cluster", "b", "--yes")
    _nothing_of(cloud, "b")
    _until(lambda: _namespaces() == [], "the hosts of b's instances to go")
