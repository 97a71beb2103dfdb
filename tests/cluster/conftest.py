"""Fixtures for the local cloud: real sshd hosts in network namespaces, moto_server as S3.

Everything here needs root; without it (or without `ip`/sshd) every test in this folder is
skipped with the reason. In CI (root, `CI` set) a skip here is a failure: the run ends
non-zero and names each skipped test with its reason, so CI is never green while the
local-cloud tests did not run. Two people (or two runs) can work side by side by giving each a
prefix and subnet: SPARKFAB_LOCALCLOUD_PREFIX=sfc1 SPARKFAB_LOCALCLOUD_SUBNET=10.77.1.0/24.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparkfab import artifacts, inventory
from sparkfab.artifacts import Download, Mirror, StageReport
from sparkfab.install import InstallPlan, InstallReport, install_cluster, plan_from
from sparkfab.inventory import Inventory
from sparkfab.localcloud import (
    Keypair,
    LocalCloud,
    derived_subnet,
    inventory_for,
    make_keypair,
    missing_requirements,
)
from sparkfab.localcloud.hosts import LOCAL_REGION, Host
from sparkfab.localcloud.mirror import build_mirror
from sparkfab.sizing import WorkerResources

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PREFIX = os.environ.get("SPARKFAB_LOCALCLOUD_PREFIX", "sf")
SUBNET = os.environ.get("SPARKFAB_LOCALCLOUD_SUBNET", "10.77.0.0/24")
CLOUD_ROOT = REPO / ".cache" / "localcloud"
WORKERS = 2

_WHY_NOT = missing_requirements()


def skips_fail_the_run() -> bool:
    """CI runs as root: there every precondition of the local cloud can be met."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci and os.geteuid() == 0


_SKIPPED: dict[str, str] = {}  # nodeid -> reason, for tests under this folder


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED[report.nodeid] = _skip_reason(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a module that skips itself as it is imported
        _SKIPPED[report.nodeid] = _skip_reason(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and skips_fail_the_run() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIPPED and skips_fail_the_run():
        terminalreporter.section("local-cloud tests skipped in CI: the run fails", red=True)
        for nodeid, reason in sorted(_SKIPPED.items()):
            terminalreporter.write_line(f"SKIPPED IN CI {nodeid}: {reason}", red=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.cluster)
    # The tests on the one shared installed cluster run last and together, so it is up only
    # while they run (a session fixture ends with the session).
    items.sort(key=lambda item: "spark_cluster" in getattr(item, "fixturenames", ()))  # stable


def _skip_without_local_cloud() -> None:
    if _WHY_NOT:
        pytest.skip("local cloud unavailable: " + "; ".join(_WHY_NOT))


@pytest.fixture(autouse=True)
def _needs_local_cloud() -> None:
    _skip_without_local_cloud()


def leftovers(prefix: str) -> list[str]:
    """Everything a local cloud named `prefix` makes on this machine that is still there:
    namespaces, machines' cgroups and nspawn processes, its NAT table, bridge, mounts."""
    from sparkfab.localcloud import machines, nat, netns, target

    left = [f"namespace {ns}" for ns in netns.list_namespaces() if ns.startswith(f"{prefix}-")]
    left += [f"cgroup {p}" for p in machines.CGROUP_ROOT.glob(f"{prefix}-*")]
    if nat.table_exists(prefix):
        left.append(f"nft table {nat.table_name(prefix)}")
    if netns.link_exists(netns.Names(prefix).bridge):
        left.append("bridge")
    workdir = str(target.workdir_for(prefix, CLOUD_ROOT))
    left += [f"mount {line.split()[1]}" for line in
             Path("/proc/self/mounts").read_text().splitlines() if workdir in line]
    out = subprocess.run(["pgrep", "-f", f"systemd-nspawn.*--machine={prefix}-"],
                         capture_output=True, text=True, check=False).stdout.split()
    left += [f"nspawn pid {pid}" for pid in out]
    return left


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory: pytest.TempPathFactory) -> Keypair:
    """An ed25519 key made for this test session only."""
    return make_keypair(tmp_path_factory.mktemp("ssh") / "id_ed25519", "sparkfab-tests")


def cloud_for(tag: str = "", k: int = 0) -> LocalCloud:
    """A LocalCloud named from the session's prefix; k > 0 gives one that can run beside it."""
    prefix = f"{PREFIX}{tag}{k or ''}"
    return LocalCloud(prefix, derived_subnet(SUBNET, k), workdir=CLOUD_ROOT / prefix)


@pytest.fixture(scope="session")
def cloud_maker() -> Callable[..., LocalCloud]:
    """cloud_for(tag, k): an unstarted LocalCloud that can run beside `local_cloud` (k > 0)."""
    return cloud_for


@pytest.fixture(scope="module")
def local_cloud(ssh_keypair: Keypair) -> Iterator[LocalCloud]:
    """A master, WORKERS workers and moto_server; one per test module, removed after it.

    Hosts are `cloud.hosts["master"]`, `["worker-1"]`, ...; S3 is `cloud.moto_endpoint`.
    """
    with cloud_for() as cloud:
        cloud.add_host("master", None, [ssh_keypair.public_key])
        for i in range(1, WORKERS + 1):
            cloud.add_host(f"worker-{i}", None, [ssh_keypair.public_key])
        cloud.start_moto()
        (cloud.workdir / "known_hosts").write_text(cloud.known_hosts())
        yield cloud


@pytest.fixture
def local_cloud_factory() -> Iterator[Callable[[], LocalCloud]]:
    """Extra clouds (brought up, not yet populated) beside `local_cloud`; all removed after."""
    made: list[LocalCloud] = []

    def make() -> LocalCloud:
        cloud = cloud_for("x", len(made) + 1)
        made.append(cloud)
        return cloud.up()

    yield make
    errors = []
    for cloud in made:
        try:
            cloud.down()
        except Exception as exc:  # keep going: every cloud must be removed
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def ssh(ssh_keypair: Keypair) -> Callable[..., subprocess.CompletedProcess[str]]:
    """ssh(host, command, known_hosts=..., key=...) with the real OpenSSH client, strictly:
    only the cloud's host keys are trusted and nothing is added to any known_hosts."""

    def run(
        host: Host,
        command: str,
        *,
        known_hosts: Path | None = None,
        key: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        kh = known_hosts
        if kh is None:
            kh = host.node_dir / "known_hosts.client"
            kh.write_text(host.host_public_key + "\n")
        return subprocess.run(
            [
                "ssh",
                "-i",
                str(key or ssh_keypair.private_key),
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={kh}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                f"root@{host.ip}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def mirror() -> Mirror:
    """The artifact mirror for the namespace hosts, which run this machine's Python: built on
    first use (minutes: pip, mvn, Spark assembled from pyspark), reused while pyspark and the
    pins stay the same. Not `fab local-cloud-up`'s .cache/mirror: that one holds the booted
    machines' Python's wheelhouse (Debian's 3.13), and one folder for both rebuilt each
    wheelhouse in turn and deleted the other's from under a staged Mirror."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return build_mirror(CLOUD_ROOT.parent / f"mirror-hosts-py{version}", version)


def _stage(cloud: LocalCloud, mirror: Mirror) -> Staged:
    s3 = cloud.s3_client()
    bucket = f"{cloud.prefix}-artifacts"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": LOCAL_REGION})
    t0 = time.monotonic()
    report = artifacts.stage(s3, bucket, mirror)
    seconds = time.monotonic() - t0
    return Staged(bucket, artifacts.presigned_downloads(s3, bucket, mirror), report, seconds)


@dataclass(frozen=True)
class Staged:
    bucket: str
    downloads: dict[str, Download]  # presigned URLs by artifact name: what the install uses
    report: StageReport  # the first stage into this module's moto
    seconds: float


@pytest.fixture(scope="module")
def staged_artifacts(local_cloud: LocalCloud, mirror: Mirror) -> Staged:
    """The mirror staged into a bucket on the module's moto_server, with presigned URLs."""
    return _stage(local_cloud, mirror)


SHARED_CLUSTER = "sc"
SHARED_BUCKET = "sc-data"
# Lean on shared CI cores, and still two executors.
SHARED_WORKER = WorkerResources(cores=1, memory_mb=1024)


@dataclass
class InstalledCluster:
    """A master and two workers with Spark installed and running, on their own cloud."""

    cloud: LocalCloud
    inv: Inventory
    inv_dir: Path  # its inventory and known_hosts
    settings: Any
    plan: InstallPlan
    s3: Any
    seconds: float  # the first install's wall time
    report: InstallReport

    def write_known_hosts(self) -> None:
        """Record the hosts' keys as they are now (a test may replace a host)."""
        record_host_keys(self.cloud, self.inv.cluster, self.inv_dir)


def record_host_keys(cloud: LocalCloud, cluster: str, inv_dir: Path) -> None:
    """The cloud's hosts' keys as the cluster's known_hosts in `inv_dir`."""
    inventory.known_hosts_path(cluster, inv_dir).write_text(cloud.known_hosts())


@pytest.fixture(scope="session")
def spark_cluster(ssh_keypair: Keypair, mirror: Mirror,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledCluster]:
    """ONE cluster installed from staged artifacts for the install, notebook and run-job
    modules: each install of 3 nodes is minutes of CI, and those modules test what runs on an
    installed cluster, not a fresh one each (test_install times the first install here). Its
    users run last (see pytest_collection_modifyitems); each keeps to its own S3 prefixes."""
    _skip_without_local_cloud()  # session fixtures come before the autouse check
    with cloud_for("c", 9) as cloud:
        names = ("master", *(f"worker-{i}" for i in range(1, WORKERS + 1)))
        for name in names:
            cloud.add_host(name, None, [ssh_keypair.public_key])
        cloud.start_moto()
        staged = _stage(cloud, mirror)
        s3 = cloud.s3_client()
        s3.create_bucket(Bucket=SHARED_BUCKET,
                         CreateBucketConfiguration={"LocationConstraint": LOCAL_REGION})
        inv = inventory_for(cloud, [cloud.hosts[n] for n in names], SHARED_CLUSTER,
                            bucket=SHARED_BUCKET, private_key_path=str(ssh_keypair.private_key))
        inv_dir = tmp_path_factory.mktemp("shared-inventory")
        inventory.save(inv, inv_dir)
        settings = SimpleNamespace(python_env="venv", worker_cores=SHARED_WORKER.cores,
                                   worker_memory_mb=SHARED_WORKER.memory_mb,
                                   public_key_path=f"{ssh_keypair.private_key}.pub")
        plan = plan_from(settings, staged.downloads, facts={
            "spark_version": mirror.facts.get("spark"),
            "python_version": mirror.facts.get("python")})
        record_host_keys(cloud, SHARED_CLUSTER, inv_dir)
        t0 = time.monotonic()
        report = install_cluster(inv, settings, plan=plan, inventory_dir=inv_dir, s3=s3)
        yield InstalledCluster(cloud, inv, inv_dir, settings, plan, s3,
                               time.monotonic() - t0, report)


@pytest.fixture(scope="module")
def shared_inventory_dir(spark_cluster: InstalledCluster) -> Iterator[Path]:
    """The shared cluster's inventory folder as sparkfab's default, for a module that goes
    through the commands (which read inventory.INVENTORY_DIR); its host keys as they are."""
    spark_cluster.write_known_hosts()
    old = inventory.INVENTORY_DIR
    inventory.INVENTORY_DIR = spark_cluster.inv_dir
    try:
        yield spark_cluster.inv_dir
    finally:
        inventory.INVENTORY_DIR = old


def operator_ssh_group(ec2: Any, subnet_id: str, bridge_ip: str, name: str) -> str:
    """A security group admitting SSH from the operator (this machine, on the bridge) only,
    as provision's does: instances launched by hand with none get their VPC's default
    group, which admits nothing from outside (the local cloud enforces groups)."""
    vpc = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["VpcId"]
    gid = str(ec2.create_security_group(GroupName=name, Description="test: SSH from operator",
                                        VpcId=vpc)["GroupId"])
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": f"{bridge_ip}/32"}]}])
    return gid
