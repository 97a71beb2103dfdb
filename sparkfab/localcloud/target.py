"""The local cloud as a target for the real commands: what `fab local-cloud-up/-down` do.

`up()` installs the Debian packages the machines need (image.py says which), builds or
reuses the Debian 13 machine image, starts the watcher (sparkfab.localcloud.watcher:
bridge, NAT, moto_server, one booted machine per running moto instance), then shapes moto
like an AWS account sparkfab can provision into: a VPC and subnet with the bridge's CIDR
(so moto's private IPs are the machines'), a "Debian 13" AMI behind an SSM parameter, a
bucket with the artifacts staged in it. It writes a settings file that points sparkfab
there; with `SPARKFAB_CONFIG` naming it, `fab provision / upload-data / run-job /
teardown` run unchanged.

In such settings `local_cloud` names the cloud's directory: sparkfab then signs its moto
calls as the cloud's operator, a moto user holding exactly the shipped operator policy
(principals.py: moto's IAM authorization is on, so IAM decides, and a real key is never
sent to moto). Everything else is as on AWS: host keys come from the instances' console
output, the nodes log in as `admin`, and a node powering itself off stops or terminates
its instance.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sparkfab import inventory
from sparkfab.aws import storage
from sparkfab.errors import UserError
from sparkfab.localcloud import netns, watcher
from sparkfab.localcloud.hosts import sweep
from sparkfab.localcloud.image import (
    DEFAULT_USER,
    NODE_PYTHON,
    ensure_host_packages,
    ensure_image,
)
from sparkfab.localcloud.keys import make_keypair
from sparkfab.localcloud.mirror import DEFAULT_OUT as DEFAULT_MIRROR

DEFAULT_PREFIX = "sf"
DEFAULT_SUBNET = "10.77.0.0/24"
ROOT = Path(".cache/localcloud")
SETTINGS_FILE = "sparkfab.yaml"
KEY_FILE = "id_ed25519"
# moto refuses parameter names under /aws/ (AWS's own); the settings name this one instead.
AMI_PARAMETER = "/sparkfab/local-cloud/debian/release/13/latest/amd64"
AMI_NAME = "local-cloud-debian-13-amd64"
TAG = "sparkfab:local-cloud"  # marks what local-cloud-up made in moto
# The first start on a machine builds the image (about a minute; more on a busy machine).
READY_TIMEOUT_S = 600.0
# Stopping includes deleting the nodes' files: gigabytes each once installed.
STOP_TIMEOUT_S = 900.0
STOP_NOTE_EVERY_S = 15.0
WATCHER_MODULE = "sparkfab.localcloud.watcher"

Say = Callable[[str], None]


@dataclass(frozen=True)
class CloudInfo:
    """A running local cloud, as its watcher recorded it (cloud.json)."""

    workdir: Path
    prefix: str
    subnet: str
    bridge_ip: str
    endpoint_url: str
    region: str
    watcher_pid: int
    moto_pid: int

    @property
    def bucket(self) -> str:
        return bucket_name(self.prefix)

    def client(self, service: str) -> Any:
        import boto3

        from sparkfab.localcloud import principals

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region,
                            **principals.credentials(self.workdir, principals.ADMIN))


def workdir_for(prefix: str, root: Path = ROOT) -> Path:
    return (root / prefix).resolve()


def bucket_name(prefix: str) -> str:
    return f"sparkfab-local-{prefix}"


def settings_path(prefix: str, root: Path = ROOT) -> Path:
    return workdir_for(prefix, root) / SETTINGS_FILE


# ---- the watcher process ---------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _is_watcher(pid: int, workdir: Path) -> bool:
    """`pid` is alive and is the watcher of this work directory (not a reused pid)."""
    cmd = _cmdline(pid)
    return netns.pid_alive(pid) and WATCHER_MODULE in cmd and str(workdir) in cmd


def read_info(workdir: Path) -> CloudInfo | None:
    """The cloud running from `workdir`, or None when no live watcher owns it."""
    try:
        doc = json.loads((workdir / watcher.CLOUD_FILE).read_text())
    except (OSError, ValueError):
        return None
    info = CloudInfo(workdir=workdir, **{k: doc[k] for k in (
        "prefix", "subnet", "bridge_ip", "endpoint_url", "region", "watcher_pid", "moto_pid")})
    return info if _is_watcher(info.watcher_pid, workdir) else None


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_watcher(prefix: str, subnet: str, workdir: Path, say: Say) -> CloudInfo:
    """Start the watcher in the background (its own session: it outlives this command)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "watcher.out"
    with out.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", WATCHER_MODULE, "--prefix", prefix, "--subnet", subnet,
             "--workdir", str(workdir)],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        info = read_info(workdir)
        if info is not None and info.watcher_pid == proc.pid:
            say(f"local cloud {prefix}: watcher pid {proc.pid}, moto_server "
                f"{info.endpoint_url} (pid {info.moto_pid}), bridge {info.bridge_ip}")
            return info
        if proc.poll() is not None:
            raise UserError(
                f"the local cloud's watcher exited with {proc.returncode}: "
                f"{_tail(workdir / watcher.LOG_FILE)} {_tail(out, 2)}",
                hint="needs root, iproute2 and openssh-server; see "
                f"{workdir / watcher.LOG_FILE}")
        time.sleep(0.2)
    netns.stop_pids([proc.pid], grace_s=STOP_TIMEOUT_S)
    raise UserError(f"the local cloud did not get ready in {READY_TIMEOUT_S:.0f}s",
                    hint=f"see {workdir / watcher.LOG_FILE}")


def stop_watcher(workdir: Path, say: Say) -> bool:
    """Stop the watcher by its pid (it removes its hosts, moto and bridge); False if none ran.

    A watcher that does not stop in time is killed, and what it left is swept.
    """
    pid_file = workdir / watcher.PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is None or not _is_watcher(pid, workdir):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    start = time.monotonic()
    next_note = start + STOP_NOTE_EVERY_S
    while netns.pid_alive(pid) and time.monotonic() < start + STOP_TIMEOUT_S:
        time.sleep(0.1)
        if time.monotonic() > next_note:
            trash = workdir / "trash"
            left = sum(1 for _ in trash.iterdir()) if trash.is_dir() else 0
            say(f"watcher {pid} still stopping ({time.monotonic() - start:.0f}s): deleting "
                f"the files of {left} removed host(s)")
            next_note += STOP_NOTE_EVERY_S
    if netns.pid_alive(pid):
        say(f"watcher {pid} did not stop in {STOP_TIMEOUT_S:.0f}s; killing it and sweeping")
        netns.stop_pids([pid], grace_s=1)
        _sweep(workdir)
    say(f"watcher {pid} stopped")
    return True


def _sweep(workdir: Path) -> None:
    """Remove what a killed watcher left, only while holding the cloud's lock (which
    proves no cloud with this prefix still runs)."""
    prefix = workdir.name
    with open(workdir / "lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"local cloud {prefix} is in use by another process",
                            hint=f"its lock is {workdir / 'lock'}") from None
        left = sweep(prefix, workdir)
    if left:
        raise UserError(f"local cloud {prefix}: could not remove {', '.join(left)}")


# ---- moto shaped like an account ------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    vpc_id: str
    subnet_id: str
    ami_id: str


def _tagged(prefix: str) -> list[dict[str, str]]:
    return [{"Key": TAG, "Value": prefix}]


def _find(items: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    return next(iter(items), None)


def prepare_account(info: CloudInfo, say: Say) -> Placement:
    """VPC + subnet = the bridge's CIDR, the AMI and its SSM parameter, the bucket.

    Idempotent: what is there (found by tag or name) is reused.
    """
    ec2, ssm, s3 = info.client("ec2"), info.client("ssm"), info.client("s3")
    mine = [{"Name": f"tag:{TAG}", "Values": [info.prefix]}]
    vpc = _find(ec2.describe_vpcs(Filters=mine)["Vpcs"])
    if vpc is None:
        vpc = ec2.create_vpc(CidrBlock=info.subnet, TagSpecifications=[
            {"ResourceType": "vpc", "Tags": _tagged(info.prefix)}])["Vpc"]
    subnet = _find(ec2.describe_subnets(Filters=mine)["Subnets"])
    if subnet is None:
        # The bridge's CIDR: moto's private IPs (.4, .5, ...) are then the hosts' addresses.
        subnet = ec2.create_subnet(
            VpcId=vpc["VpcId"], CidrBlock=info.subnet,
            AvailabilityZone=f"{info.region}a",
            TagSpecifications=[{"ResourceType": "subnet", "Tags": _tagged(info.prefix)}],
        )["Subnet"]
    image = _find(ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "name", "Values": [AMI_NAME]}])["Images"])
    ami_id = image["ImageId"] if image else ec2.register_image(
        Name=AMI_NAME, Description="the local cloud's Debian 13 image (sparkfab.localcloud.image)",
        Architecture="x86_64", RootDeviceName="/dev/sda1", VirtualizationType="hvm",
    )["ImageId"]
    ssm.put_parameter(Name=AMI_PARAMETER, Value=ami_id, Type="String", Overwrite=True)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=info.bucket, CreateBucketConfiguration={
            "LocationConstraint": info.region})
    # As provision makes one, but reachable over plain HTTP: moto serves the bridge so.
    storage.harden(s3, info.bucket, tls_only=False)
    say(f"moto: VPC {vpc['VpcId']}, subnet {subnet['SubnetId']} ({info.subnet}), "
        f"AMI {ami_id} via {AMI_PARAMETER}, bucket {info.bucket}")
    return Placement(vpc["VpcId"], subnet["SubnetId"], ami_id)


def stage_artifacts(info: CloudInfo, mirror_dir: Path, say: Say) -> None:
    """The local mirror (built when missing) and the demo weights staged into the bucket,
    as `fab stage` does: run-job's default weights (this cloud has no internet)."""
    from sparkfab import staging, weights
    from sparkfab.localcloud.mirror import build_mirror

    say(f"artifact mirror {mirror_dir} (built on first use: minutes)")
    mirror = build_mirror(mirror_dir, NODE_PYTHON)
    staging.stage_cluster(info.client("s3"), info.bucket, mirror, say)
    weights.stage(info.client("s3"), info.bucket, weights.local_file(weights.DEMO, say),
                  weights.DEMO, say)


def settings_for(info: CloudInfo, placement: Placement, public_key: Path) -> dict[str, Any]:
    """The settings that make sparkfab's commands work on this cloud; no credentials."""
    return {
        "region": info.region,
        "endpoint_url": info.endpoint_url,
        "local_cloud": str(info.workdir),
        "vpc_id": placement.vpc_id,
        "subnet_id": placement.subnet_id,
        "ami_ssm_parameter": AMI_PARAMETER,
        "bucket": info.bucket,
        # No public addresses here: SSH to the private IPs, as a user behind a VPN does.
        "ssh_address": "private",
        "ssh_user": DEFAULT_USER,
        "node_python": NODE_PYTHON,
        "public_key_path": str(public_key),
        # The operator is this machine, on the bridge: the subnet's first address, and only
        # it (another host on the bridge is an outsider, as the security group test shows).
        "operator_cidr": f"{info.bridge_ip}/32",
    }


def write_settings(path: Path, settings: dict[str, Any], info: CloudInfo) -> None:
    header = (
        f"# Written by `fab local-cloud-up` for local cloud {info.prefix!r}; removed by\n"
        "# `fab local-cloud-down`. Use it with:\n"
        f"#   export {CONFIG_EXPORT.format(path=path)}\n"
        "# moto accepts any credentials: sparkfab signs calls to it with dummies itself.\n"
    )
    watcher.write_atomic(path, header + yaml.safe_dump(settings, sort_keys=False))


CONFIG_EXPORT = "SPARKFAB_CONFIG={path}"


def up(prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET, *,
       mirror_dir: str | Path | None = None, root: Path = ROOT, say: Say = print) -> Path:
    """Bring the local cloud up (or complete it) and write its settings file; its path."""
    workdir = workdir_for(prefix, root)
    info = read_info(workdir)
    if info is not None and info.subnet != subnet:
        raise UserError(f"local cloud {prefix} already runs on {info.subnet}, not {subnet}",
                        hint="`fab local-cloud-down` first, or use another --prefix")
    if info is None:
        ensure_host_packages(say)
        ensure_image(say=say)
        info = start_watcher(prefix, subnet, workdir, say)
    else:
        say(f"local cloud {prefix}: already running (watcher pid {info.watcher_pid})")
    try:
        placement = prepare_account(info, say)
        key = make_keypair(workdir / KEY_FILE, f"sparkfab-local-cloud-{prefix}")
        stage_artifacts(info, Path(mirror_dir or DEFAULT_MIRROR), say)
        path = workdir / SETTINGS_FILE
        write_settings(path, settings_for(info, placement, Path(f"{key.private_key}.pub")), info)
    except BaseException:
        stop_watcher(workdir, say)
        raise
    return path


def down(prefix: str = DEFAULT_PREFIX, *, root: Path = ROOT, say: Say = print) -> bool:
    """Stop the local cloud (every host, moto with all its state) and remove its settings."""
    workdir = workdir_for(prefix, root)
    if not workdir.is_dir():
        return False
    info = read_info(workdir)
    stopped = stop_watcher(workdir, say)
    if info is not None:
        forget_clusters(info.endpoint_url, say)
    (workdir / SETTINGS_FILE).unlink(missing_ok=True)
    left = [ns for ns in netns.list_namespaces() if ns.startswith(f"{prefix}-")]
    if left or netns.link_exists(netns.Names(prefix).bridge):
        _sweep(workdir)
    return stopped


def forget_clusters(endpoint_url: str, say: Say, directory: Path | None = None) -> list[str]:
    """Remove the inventories of clusters that lived in a local cloud now gone (its moto
    held everything they were made of); the clusters' names."""
    folder = directory or inventory.INVENTORY_DIR
    gone = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            inv = inventory.load(path.stem, folder)
        except (ValueError, TypeError):
            continue  # not an inventory of ours
        if inv is not None and inv.endpoint_url == endpoint_url:
            inventory.remove(inv.cluster, folder)
            gone.append(inv.cluster)
            say(f"cluster {inv.cluster} was in this local cloud (no `fab teardown`): "
                f"its inventory is removed too")
    return gone
