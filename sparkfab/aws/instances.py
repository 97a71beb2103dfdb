"""AMI lookup, launching the master and workers, and waiting for them.

Every instance: IMDSv2 only, an encrypted gp3 root volume, shutdown behaviour `terminate`
(so the user-data lifetime guard, or any `shutdown`, ends billing), the cluster's key
pair, security group and instance profile, and the cluster tags plus its role.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from sparkfab.aws import tags as T
from sparkfab.aws.session import error_code
from sparkfab.config import Settings
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER
from sparkfab.render import render

USER_DATA_TEMPLATE = "user-data.sh"
# A worker whose master has been unreachable this long shuts itself down.
ORPHAN_MINUTES = 10
LIVE_STATES = ("pending", "running", "stopping", "stopped")
# Waiter pacing; tests set WAIT_DELAY_S to 0.
WAIT_DELAY_S = 5.0
WAIT_MAX_S = 900
# A new instance profile takes a few seconds to be usable by EC2 (IAM is eventually
# consistent): run_instances is retried on that error only.
PROFILE_RETRY_DELAY_S = 3.0
PROFILE_RETRIES = 10

_WORKER_NAME = re.compile(r"worker-([1-9][0-9]*)")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    image_id: str
    root_device: str
    architecture: str


def resolve_ami(ec2: Any, ssm: Any, settings: Settings) -> Image:
    """The AMI to launch: `ami` when set, else the one the public SSM parameter names."""
    image_id = settings.ami
    if image_id is None:
        try:
            image_id = ssm.get_parameter(Name=settings.ami_ssm_parameter)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) == "ParameterNotFound":
                raise UserError(f"the AMI parameter {settings.ami_ssm_parameter} does not "
                                f"exist in {settings.region}",
                                hint="set ami to an image id of this region") from None
            raise
    try:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except ClientError as exc:
        if error_code(exc).startswith("InvalidAMIID"):
            images = []
        else:
            raise
    if not images:
        raise UserError(f"AMI {image_id} was not found in {settings.region}",
                        hint="AMI ids differ per region: unset ami to use the Debian 13 "
                        "image, or give an id from this region")
    img = images[0]
    return Image(image_id, img.get("RootDeviceName") or "/dev/sda1",
                 img.get("Architecture", "x86_64"))


def check_architecture(ec2: Any, image: Image, instance_types: set[str]) -> None:
    info = ec2.describe_instance_types(InstanceTypes=sorted(instance_types))["InstanceTypes"]
    for it in info:
        archs = it.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
        if archs and image.architecture not in archs:
            raise UserError(f"AMI {image.image_id} is {image.architecture}, but "
                            f"{it['InstanceType']} runs {'/'.join(archs)}",
                            hint="pick an AMI and instance types of the same architecture")


def user_data(settings: Settings, role: str, master_ip: str | None) -> str:
    return render(USER_DATA_TEMPLATE, cluster=settings.cluster, role=role,
                  max_lifetime_s=settings.max_lifetime_hours * 3600,
                  master_ip=master_ip if role == ROLE_WORKER else None,
                  orphan_minutes=ORPHAN_MINUTES)


def find_instances(ec2: Any, cluster: str, states: tuple[str, ...] = LIVE_STATES
                   ) -> list[dict[str, Any]]:
    filters = [*T.ec2_filter(cluster), {"Name": "instance-state-name", "Values": list(states)}]
    out = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for res in page["Reservations"]:
            out.extend(res["Instances"])
    return sorted(out, key=lambda i: (name_of(i) != ROLE_MASTER, name_of(i), i["InstanceId"]))


def name_of(instance: dict[str, Any]) -> str:
    """The node name ("master", "worker-1", ...) kept in the instance's Name tag."""
    tag = T.as_dict(instance.get("Tags")).get("Name", "")
    return tag.rpartition(":")[2]


def role_of(instance: dict[str, Any]) -> str:
    return T.as_dict(instance.get("Tags")).get(T.TAG_ROLE, "")


@dataclass(frozen=True)
class LaunchSpec:
    role: str
    names: list[str]
    instance_type: str
    spot: bool
    user_data: str


def _run_one(ec2: Any, settings: Settings, spec: LaunchSpec, name: str, image: Image,
             key_name: str, group_id: str, subnet_id: str | None, profile: str) -> str:
    """Launch one node. One call per node: its Name tag is set atomically at launch, and
    a capacity error leaves the nodes already launched usable by the next run."""
    tags = T.cluster_tags(settings.cluster, settings.tags)
    params: dict[str, Any] = {
        "ImageId": image.image_id,
        "InstanceType": spec.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": key_name,
        "SecurityGroupIds": [group_id],
        "IamInstanceProfile": {"Name": profile},
        "UserData": spec.user_data,
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                            "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [{"DeviceName": image.root_device, "Ebs": {
            "VolumeSize": settings.root_volume_gb, "VolumeType": "gp3",
            "Encrypted": True, "DeleteOnTermination": True}}],
        "TagSpecifications": [
            T.spec("instance", {**tags, T.TAG_ROLE: spec.role,
                                "Name": f"sparkfab:{settings.cluster}:{name}"}),
            T.spec("volume", tags),
        ],
        # Same token on botocore's own retries: a lost response never launches twice.
        "ClientToken": f"sparkfab-{uuid.uuid4()}",
    }
    if subnet_id:
        params["SubnetId"] = subnet_id
    if spec.spot:
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    for attempt in range(PROFILE_RETRIES + 1):
        try:
            return str(ec2.run_instances(**params)["Instances"][0]["InstanceId"])
        except ClientError as exc:
            profile_not_ready = (error_code(exc) == "InvalidParameterValue"
                                 and "iamInstanceProfile" in str(exc))
            if not profile_not_ready or attempt == PROFILE_RETRIES:
                raise
            time.sleep(PROFILE_RETRY_DELAY_S)
    raise AssertionError("unreachable")


def _run(ec2: Any, settings: Settings, spec: LaunchSpec, image: Image, key_name: str,
         group_id: str, subnet_id: str | None, profile: str) -> list[str]:
    return [_run_one(ec2, settings, spec, name, image, key_name, group_id, subnet_id, profile)
            for name in spec.names]


def ensure_instances(ec2: Any, settings: Settings, image: Image, key_name: str,
                     group_id: str, subnet_id: str | None, profile: str, say: Say) -> int:
    """Launch the missing master/workers; the number launched (0: all were there)."""
    existing = find_instances(ec2, settings.cluster)
    by_name = {name_of(i): i for i in existing}
    stopped = [i["InstanceId"] for i in existing if i["State"]["Name"] == "stopped"]
    if stopped:
        ec2.start_instances(InstanceIds=stopped)
        say(f"instances {', '.join(stopped)}: were stopped, started")
    launched = 0

    master = by_name.get(ROLE_MASTER)
    if master is None:
        say(f"launching the master ({settings.master_instance_type}, on-demand)")
        _run(ec2, settings, LaunchSpec(ROLE_MASTER, [ROLE_MASTER],
                                       settings.master_instance_type, False,
                                       user_data(settings, ROLE_MASTER, None)),
             image, key_name, group_id, subnet_id, profile)
        launched += 1
        master = by_name[ROLE_MASTER] = find_by_name(ec2, settings.cluster, ROLE_MASTER)
    else:
        say(f"master {master['InstanceId']}: exists ({master['State']['Name']})")

    present = [n for n in by_name if worker_number(n) is not None]
    missing, surplus = plan_workers(present, settings.workers)
    if present:
        say(f"workers: {len(present)} exist")
    if surplus:
        say(f"{len(surplus)} worker(s) beyond workers={settings.workers}: "
            f"{', '.join(surplus)} (removed next)")
    if missing:
        kind = "spot" if settings.spot else "on-demand"
        say(f"launching {len(missing)} worker(s) ({settings.worker_instance_type}, {kind})")
        _run(ec2, settings, LaunchSpec(ROLE_WORKER, missing, settings.worker_instance_type,
                                       settings.spot,
                                       user_data(settings, ROLE_WORKER,
                                                 master["PrivateIpAddress"])),
             image, key_name, group_id, subnet_id, profile)
        launched += len(missing)
    return launched


def worker_number(name: str) -> int | None:
    """3 for "worker-3"; None for the master or a name sparkfab did not give."""
    match = _WORKER_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def plan_workers(present: list[str], workers: int) -> tuple[list[str], list[str]]:
    """(names to launch, names to remove) so that exactly `workers` workers remain.

    The lowest-numbered workers are kept and the highest removed (the newest, usually);
    new ones take the lowest free numbers, so a lost worker-1 is replaced as worker-1.
    """
    ordered = sorted(present, key=lambda n: worker_number(n) or 0)
    surplus = ordered[workers:]
    taken = {worker_number(n) for n in ordered}
    free = (f"worker-{k}" for k in range(1, workers + len(taken) + 1) if k not in taken)
    launch = [next(free) for _ in range(workers - len(ordered))]
    return launch, surplus


def surplus_workers(live: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """The live worker instances beyond `workers` (see plan_workers), highest first."""
    by_name = {name_of(i): i for i in live if worker_number(name_of(i)) is not None}
    _, surplus = plan_workers(list(by_name), workers)
    return [by_name[n] for n in reversed(surplus)]


def find_by_name(ec2: Any, cluster: str, name: str) -> dict[str, Any]:
    for inst in find_instances(ec2, cluster):
        if name_of(inst) == name:
            return inst
    raise RuntimeError(f"instance {name} of {cluster} vanished right after launch")


def _waiter_config() -> dict[str, int]:
    delay = max(0, int(WAIT_DELAY_S))
    return {"Delay": delay, "MaxAttempts": max(1, int(WAIT_MAX_S / max(delay, 1)))}


def wait_ready(ec2: Any, instance_ids: list[str], say: Say) -> None:
    """Until every instance is running and passes its status checks."""
    if not instance_ids:
        return
    say(f"waiting for {len(instance_ids)} instance(s) to run")
    ec2.get_waiter("instance_running").wait(InstanceIds=instance_ids,
                                            WaiterConfig=_waiter_config())
    say("waiting for the status checks (a few minutes on AWS)")
    ec2.get_waiter("instance_status_ok").wait(InstanceIds=instance_ids,
                                              WaiterConfig=_waiter_config())


def terminate(ec2: Any, instance_ids: list[str], say: Say) -> None:
    if not instance_ids:
        return
    ec2.terminate_instances(InstanceIds=instance_ids)
    say(f"terminating {len(instance_ids)} instance(s); waiting until they are gone")
    ec2.get_waiter("instance_terminated").wait(InstanceIds=instance_ids,
                                               WaiterConfig=_waiter_config())
