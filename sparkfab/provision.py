"""`fab provision` and `fab teardown` as functions: AWS resources in order, then the install.

Every step first looks for what it would create (by name and tag) and reuses it, so a
second run creates nothing new and says so, and a run after a half-way failure picks up
where the first stopped. Local checks (settings, public key, operator address) come first:
a bad input fails before anything is created.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from sparkfab import inventory as inv_mod
from sparkfab import shrink
from sparkfab.aws import iam, instances, keys, locate, network, storage
from sparkfab.aws import tags as T
from sparkfab.aws import teardown as td
from sparkfab.aws.session import AwsSession, aws_errors
from sparkfab.config import Settings
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node

Say = Callable[[str], None]


def log_path(cluster: str, directory: Path | None = None) -> Path:
    """inventory/<cluster>.log: what provision and teardown did, for the record."""
    return (directory or inv_mod.INVENTORY_DIR) / f"{cluster}.log"


class Reporter:
    """Prints progress lines and appends them, timestamped, to the cluster's log."""

    def __init__(self, cluster: str, stream: TextIO | None = None,
                 directory: Path | None = None) -> None:
        self.stream = stream or sys.stdout
        self.path = log_path(cluster, directory)

    def __call__(self, message: str) -> None:
        print(message, file=self.stream, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        # 0600 like the inventory next to it: it names the cluster's resources.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(f"{stamp} {message}\n")


@dataclass
class ProvisionResult:
    inventory: Inventory
    path: Path
    created: list[str] = field(default_factory=list)  # what this run created
    removed: list[str] = field(default_factory=list)  # surplus workers this run removed


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node(inst: dict[str, object]) -> Node:
    name = instances.name_of(inst)  # type: ignore[arg-type]
    return Node(
        role=ROLE_MASTER if name == ROLE_MASTER else ROLE_WORKER,
        instance_id=str(inst["InstanceId"]),
        instance_type=str(inst["InstanceType"]),
        private_ip=str(inst.get("PrivateIpAddress", "")),
        public_ip=inst.get("PublicIpAddress") or None,  # type: ignore[arg-type]
        name=name,
        lifecycle="spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand",
        launched_at=_iso(inst["LaunchTime"]),  # type: ignore[arg-type]
    )


def provision(settings: Settings, say: Say, *, install: bool = True,
              directory: Path | None = None,
              drain_timeout_s: float = shrink.DEFAULT_DRAIN_TIMEOUT_S,
              drain: shrink.Drain | None = None) -> ProvisionResult:
    """Make the cluster exist (reusing what is there), write its inventory, then install.

    Workers beyond `settings.workers` are drained, stopped and terminated (sparkfab.shrink;
    `drain` replaces the SSH drain in tests)."""
    public_key = keys.read_public_key(settings.public_key_file)
    cidr = network.operator_cidr(settings)
    aws = AwsSession(settings)
    region = aws.region
    created: list[str] = []
    say(f"cluster {settings.cluster} in {region}: 1 master + {settings.workers} worker(s); "
        f"SSH allowed from {cidr}")

    with aws_errors(region, "checking your AWS identity"):
        account = aws.account_id
    bucket = settings.bucket or storage.default_bucket_name(settings.cluster, account, region)
    ec2 = aws.client("ec2")

    with aws_errors(region, f"preparing bucket {bucket}"):
        if storage.ensure_bucket(aws.client("s3"), bucket, region, settings.cluster,
                                 settings.bucket_versioning, settings.tags, say,
                                 tls_only=not settings.local_cloud):
            created.append(f"bucket {bucket}")
        bucket_created = T.is_ours(storage.bucket_tags(aws.client("s3"), bucket),
                                   settings.cluster)
    with aws_errors(region, "preparing the IAM role and instance profile"):
        names, made = iam.ensure_role(aws.client("iam"), settings.cluster, bucket,
                                      settings.tags, say)
        if made:
            created.append(f"IAM role/profile {names.role}")
    with aws_errors(region, "importing the key pair"):
        key_name, made = keys.ensure_key_pair(ec2, settings.cluster, public_key,
                                              settings.tags, say)
        if made:
            created.append(f"key pair {key_name}")
    with aws_errors(region, "preparing the security group"):
        placement = network.resolve_placement(ec2, settings)
        group_id, made = network.ensure_security_group(ec2, settings, placement.vpc_id,
                                                       cidr, say)
        if made:
            created.append(f"security group {group_id}")
    with aws_errors(region, "finding the AMI"):
        image = instances.resolve_ami(ec2, aws.client("ssm"), settings)
        instances.check_architecture(
            ec2, image, {settings.master_instance_type, settings.worker_instance_type})
        say(f"AMI {image.image_id} ({image.architecture})")
    try:
        with aws_errors(region, "launching instances"):
            launched = instances.ensure_instances(ec2, settings, image, key_name, group_id,
                                                  placement.subnet_id, names.profile, say)
    except UserError as exc:
        raise _with_what_runs(exc, ec2, settings.cluster) from exc
    if launched:
        created.append(f"{launched} instance(s)")
    removed: list[str] = []
    with aws_errors(region, "removing surplus workers"):
        surplus = instances.surplus_workers(instances.find_instances(ec2, settings.cluster),
                                            settings.workers)
        if surplus:
            removed = shrink.remove_workers(ec2, settings.cluster, surplus, settings.workers,
                                            say, drain_timeout_s=drain_timeout_s,
                                            drain=drain, directory=directory)
    with aws_errors(region, "waiting for the instances"):
        live = instances.find_instances(ec2, settings.cluster)
        instances.wait_ready(ec2, [i["InstanceId"] for i in live], say)
        live = instances.find_instances(ec2, settings.cluster)

    previous = inv_mod.load(settings.cluster, directory)
    nodes = [_node(i) for i in live]
    master = next(i for i in live if instances.name_of(i) == ROLE_MASTER)
    inv = Inventory(
        cluster=settings.cluster,
        region=region,
        ssh_user=settings.ssh_user,
        nodes=nodes,
        ssh_address=settings.ssh_address,
        key_name=key_name,
        private_key_path=str(settings.private_key_path),
        bucket=bucket,
        bucket_created=bucket_created,
        security_group_id=group_id,
        vpc_id=placement.vpc_id,
        subnet_id=placement.subnet_id or str(master.get("SubnetId", "")),
        instance_profile=names.profile,
        role_name=names.role,
        policy_name=names.policy,
        endpoint_url=settings.endpoint_url,
        # Kept across runs: the nodes already trust it.
        spark_secret=(previous.spark_secret if previous and previous.spark_secret
                      else secrets.token_urlsafe(32)),
        created_at=(previous.created_at if previous and previous.created_at
                    else _iso(datetime.now(timezone.utc))),
        # Read by the idle guard: a local-cloud node shares this machine's kernel.
        extra={"local_cloud": settings.local_cloud} if settings.local_cloud else {},
    )
    path = inv_mod.save(inv, directory)
    if settings.ssh_address == "public" and any(not n.public_ip for n in nodes):
        say("warning: some nodes have no public IP; SSH will use their private IPs "
            "(set ssh_address: private, or use a subnet that assigns public IPs)")
    say(f"inventory written: {path}")
    if created:
        say("created: " + "; ".join(created))
    if removed:
        say(f"removed: {', '.join(removed)}; cluster {settings.cluster} now has "
            f"{len(inv.workers)} worker(s)")
    if not created and not removed:
        say(f"nothing new: cluster {settings.cluster} was already complete")
    result = ProvisionResult(inv, path, created, removed)
    if install:
        run_install(inv, settings, say)
    return result


def _with_what_runs(exc: UserError, ec2: Any, cluster: str) -> UserError:
    """A launch failure that leaves instances running says so: they bill until removed."""
    try:
        live = instances.find_instances(ec2, cluster)
    except Exception:  # the original error matters more than this extra line
        return exc
    if not live:
        return exc
    listed = ", ".join(f"{instances.name_of(i)} {i['InstanceId']}" for i in live)
    return UserError(
        f"{exc.message}; {len(live)} instance(s) of cluster {cluster} are running (and "
        f"billing): {listed}",
        hint="run `fab provision` again to complete the cluster (it reuses them), or "
        "`fab teardown` to remove them" + (f"; {exc.hint}" if exc.hint else ""))


def run_install(inv: Inventory, settings: Settings, say: Say) -> None:
    """The SSH install (sparkfab.install), when that part of sparkfab is present."""
    try:
        from sparkfab.bringup import bring_up  # imports sparkfab.install
    except ModuleNotFoundError as exc:
        if exc.name not in ("sparkfab.install", "sparkfab.bringup"):
            raise
        raise UserError(
            "instances are running and the inventory is written, but the install step "
            "(sparkfab.install) is not part of this checkout",
            hint="run `fab provision --no-install` to stop after AWS, or update sparkfab",
        ) from None
    say("installing Java, Spark and Python on the nodes over SSH")
    bring_up(inv, settings, say)


def for_existing_cluster(settings: Settings, say: Say, directory: Path | None = None,
                         *, follow: bool = False) -> Settings:
    """The settings, with the region the cluster is really in.

    The inventory's region wins. Without one, a region holding none of the cluster's
    instances is checked against the other EU regions (sparkfab.aws.locate): a wrong
    region must never read as "nothing there" while the cluster bills elsewhere. Found in
    exactly one other region, a read-only task (`follow`) switches to it and says so;
    otherwise it is an error that names where the instances are.
    """
    known = inv_mod.load(settings.cluster, directory)
    if known:
        if known.region != settings.region:
            say(f"cluster {settings.cluster} is in {known.region} (from its inventory)")
            return settings.replace(region=known.region)
        return settings
    if locate.instance_ids(settings, settings.region):
        return settings
    found = locate.elsewhere(settings).found
    if not found:
        return settings
    where = ", ".join(f"{len(ids)} in {region}" for region, ids in found.items())
    if follow and len(found) == 1:
        region = next(iter(found))
        say(f"cluster {settings.cluster} has no instances in {settings.region} but {where} "
            "(no inventory here): showing those")
        return settings.replace(region=region)
    raise UserError(
        f"cluster {settings.cluster} has no instances in {settings.region}, but has "
        f"instances elsewhere: {where}",
        hint=f"name the cluster's region: --region {next(iter(found))} (or `region:` in "
        "sparkfab.yaml)",
    )


def teardown_plan(settings: Settings, delete_bucket: bool,
                  directory: Path | None = None) -> tuple[AwsSession, td.TeardownPlan]:
    aws = AwsSession(settings)
    known = inv_mod.load(settings.cluster, directory)
    with aws_errors(aws.region, "finding the cluster's resources"):
        return aws, td.plan(aws, delete_bucket, bucket=known.bucket if known else None)


def teardown(aws: AwsSession, plan: td.TeardownPlan, say: Say,
             directory: Path | None = None) -> None:
    with aws_errors(aws.region, "deleting the cluster's resources"):
        td.execute(aws, plan, say)
    inv_mod.remove(plan.cluster, directory)
    say(f"cluster {plan.cluster}: torn down; inventory removed")
