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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sparkfab import artifacts
from sparkfab.artifacts import Download, Mirror, StageReport
from sparkfab.localcloud import (
    Keypair,
    LocalCloud,
    derived_subnet,
    make_keypair,
    missing_requirements,
)
from sparkfab.localcloud.hosts import LOCAL_REGION, Host
from sparkfab.localcloud.mirror import build_mirror

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


@pytest.fixture(autouse=True)
def _needs_local_cloud() -> None:
    if _WHY_NOT:
        pytest.skip("local cloud unavailable: " + "; ".join(_WHY_NOT))


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
    """The local artifact mirror in .cache/mirror: built on first use (minutes: pip, mvn,
    Spark assembled from pyspark), reused while pyspark and the pins stay the same."""
    return build_mirror(CLOUD_ROOT.parent / "mirror")


@dataclass(frozen=True)
class Staged:
    bucket: str
    downloads: dict[str, Download]  # presigned URLs by artifact name: what the install uses
    report: StageReport  # the first stage into this module's moto
    seconds: float


@pytest.fixture(scope="module")
def staged_artifacts(local_cloud: LocalCloud, mirror: Mirror) -> Staged:
    """The mirror staged into a bucket on the module's moto_server, with presigned URLs."""
    s3 = local_cloud.s3_client()
    bucket = f"{local_cloud.prefix}-artifacts"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": LOCAL_REGION})
    t0 = time.monotonic()
    report = artifacts.stage(s3, bucket, mirror)
    seconds = time.monotonic() - t0
    return Staged(bucket, artifacts.presigned_downloads(s3, bucket, mirror), report, seconds)


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
