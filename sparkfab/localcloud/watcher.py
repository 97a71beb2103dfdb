"""The local cloud's "hypervisor": every running moto instance is a booted machine.

Runs as a background process (started by `fab local-cloud-up`, stopped by pid through
`fab local-cloud-down`):

    python -m sparkfab.localcloud.watcher --prefix sf --subnet 10.77.0.0/24 --workdir DIR

It owns the whole cloud: the bridge, NAT to the package registries (nat.py), moto_server
on the bridge address, and one machine per instance (machines.py: the Debian image booted
under systemd-nspawn). It speaks to moto on one side and to the machine provider on the
other. Every POLL_S it asks moto for the instances of the cloud's subnet:
- running, no machine yet: a machine is created at the instance's private IP (moto hands
  them out in order, .4, .5, ...) with the instance's user data and key pair (cloud-init),
  and booted;
- stopped or terminated in moto (by the API): its machine is shut down (SIGTERM); a stopped
  one keeps its disk for the next start, a terminated one loses it;
- its machine powered itself off (idle guard, lifetime timer, `shutdown -h`): the instance
  is stopped or terminated in moto, per its `InstanceInitiatedShutdownBehavior`, as EC2 does;
  a reboot inside the machine boots it again.
Each machine's console is `console/<instance id>.log`, which moto serves as the instance's
`GetConsoleOutput` (motoserver.py): host keys reach the operator as on AWS.
Each machine also gets what EC2 wraps around an instance, in place before it boots: its
security groups as a firewall in its namespace (firewall.py, re-rendered every poll, so an
authorize or revoke takes effect within a second) and IMDSv2 at 169.254.169.254 with its
instance profile's temporary credentials from moto STS (imds.py).

What it runs is recorded in the work directory:

  watcher.pid   its pid (removed when it stops)
  cloud.json    endpoint, subnet, region: written once moto answers ("ready")
  hosts.json    instance id -> ip, namespace, nspawn pid, boots, console log
  watcher.log   what it did, one timestamped line per event

SIGTERM (or SIGINT) stops it: every machine is shut down, moto_server stopped by pid, the
NAT table and the bridge deleted, and the pid file removed.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparkfab.localcloud import firewall, imds, machines, nat, principals, resources
from sparkfab.localcloud.hosts import LOCAL_REGION, LocalCloud, one_core
from sparkfab.localcloud.image import ensure_image

POLL_S = 0.5
# A machine that failed to start is retried after this long, not on every poll.
RETRY_AFTER_S = 5.0
DELETE_THREADS = 4
PID_FILE = "watcher.pid"
CLOUD_FILE = "cloud.json"
HOSTS_FILE = "hosts.json"
LOG_FILE = "watcher.log"
CONSOLE_DIR = "console"


@dataclass(frozen=True)
class Wanted:
    """A running moto instance that should have a machine."""

    instance_id: str
    ip: str
    public_key: str
    instance_type: str = ""


@dataclass(frozen=True)
class HostRecord:
    instance_id: str
    ip: str
    namespace: str
    pid: int
    boots: int
    console: str


def write_atomic(path: Path, text: str) -> None:
    """Readers (provision, tests) never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def host_name(instance_id: str) -> str:
    """The harness's host name for an instance: its id (unique, and what moto reports)."""
    return instance_id.lower()


def instance_states(ec2: Any, subnet: ipaddress.IPv4Network) -> dict[str, dict[str, Any]]:
    """Every instance moto has in `subnet` (any state), by id."""
    out: dict[str, dict[str, Any]] = {}
    for page in ec2.get_paginator("describe_instances").paginate():
        for res in page["Reservations"]:
            for inst in res["Instances"]:
                ip = inst.get("PrivateIpAddress")
                if ip and ipaddress.IPv4Address(ip) in subnet:
                    out[inst["InstanceId"]] = inst
    return out


def wanted_instances(ec2: Any, subnet: ipaddress.IPv4Network,
                     log: Any = print,
                     states: dict[str, dict[str, Any]] | None = None) -> dict[str, Wanted]:
    """Running instances in `subnet`, each with the public key of its key pair."""
    keys: dict[str, str | None] = {}
    out: dict[str, Wanted] = {}
    for inst in (states if states is not None else instance_states(ec2, subnet)).values():
        if inst["State"]["Name"] != "running":
            continue
        ip = inst["PrivateIpAddress"]
        key_name = inst.get("KeyName")
        if key_name and key_name not in keys:
            keys[key_name] = _public_key(ec2, key_name)
        public_key = keys.get(key_name) if key_name else None
        if not public_key:
            log(f"instance {inst['InstanceId']} at {ip}: no imported key pair "
                f"({key_name or 'none given'}); it gets no machine")
            continue
        out[inst["InstanceId"]] = Wanted(inst["InstanceId"], ip, public_key,
                                         str(inst.get("InstanceType") or ""))
    return out


def _public_key(ec2: Any, key_name: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        pairs = ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"]
    except ClientError:
        return None
    return str(pairs[0].get("PublicKey") or "").strip() or None if pairs else None


def user_data(ec2: Any, instance_id: str) -> bytes:
    """The instance's user data as launched (moto keeps it, base64 as the API gives it)."""
    attr = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    value = (attr.get("UserData") or {}).get("Value")
    return base64.b64decode(value) if value else b""


def shutdown_behaviour(ec2: Any, instance_id: str) -> str:
    attr = ec2.describe_instance_attribute(InstanceId=instance_id,
                                           Attribute="instanceInitiatedShutdownBehavior")
    return str((attr.get("InstanceInitiatedShutdownBehavior") or {}).get("Value") or "stop")


class Deleter:
    """Deletes removed machines' disks in the background, several at once.

    An installed node holds gigabytes (Spark, a Python env with TensorFlow); deleting them
    took minutes here (ext4 mounted with `discard`: every freed extent waits for the
    disk, so deletions overlap well). A terminated instance's machine stops and leaves the
    network at once; its disk goes away behind it, and `finish()` waits for that before
    the cloud counts as down.
    """

    def __init__(self, trash: Path, log: Any = print) -> None:
        self.trash = trash
        self.log = log
        self._pool = ThreadPoolExecutor(max_workers=DELETE_THREADS,
                                        thread_name_prefix="deleter")
        if trash.is_dir():  # left by a watcher that was killed
            for old in sorted(trash.iterdir()):
                self._pool.submit(self._delete, old)

    def take(self, directory: Path) -> None:
        """Move `directory` out of the way now (a rename), delete it later."""
        if not directory.exists():
            return
        self.trash.mkdir(parents=True, exist_ok=True)
        target = self.trash / f"{directory.name}-{time.time_ns()}"
        directory.rename(target)
        self._pool.submit(self._delete, target)

    def pending(self) -> int:
        return sum(1 for _ in self.trash.iterdir()) if self.trash.is_dir() else 0

    def _delete(self, path: Path) -> None:
        t0 = time.monotonic()
        shutil.rmtree(path, ignore_errors=True)
        self.log(f"deleted {path.name} ({time.monotonic() - t0:.0f}s)")

    def finish(self) -> None:
        self._pool.shutdown(wait=True)
        if self.trash.is_dir():
            shutil.rmtree(self.trash, ignore_errors=True)


class Watcher:
    """Keeps one booted machine per running moto instance, and moto told of power-offs."""

    def __init__(self, cloud: LocalCloud, ec2: Any, provider: machines.NspawnProvider,
                 log: Any = print, deleter: Deleter | None = None,
                 metadata_clients: tuple[Any, Any, Any] | None = None) -> None:
        """`metadata_clients`: (ec2, iam, sts) clients the machines' metadata services ask
        moto with (their own: they answer from threads of their own); None: no IMDS."""
        self.cloud = cloud
        self.ec2 = ec2
        self._metadata_clients = metadata_clients
        self._credentials = (imds.MotoCredentials(metadata_clients[2])
                             if metadata_clients else None)
        self._metadata: dict[str, imds.MetadataServer] = {}
        self.provider = provider
        self.log = log
        self.deleter = deleter or Deleter(cloud.workdir / "trash", log)
        self.machines: dict[str, machines.Machine] = {}
        self._failed_at: dict[str, float] = {}
        self._rules: dict[str, str] = {}  # instance id -> the firewall table applied
        self._sizes: dict[str, resources.Resources | None] = {}  # by instance type

    def sync(self) -> bool:
        """One poll. True when something changed."""
        changed = self._power_events()
        states = instance_states(self.ec2, self.cloud.subnet)
        wanted = wanted_instances(self.ec2, self.cloud.subnet, self.log, states)
        groups = firewall.security_groups(self.ec2) if wanted or self.machines else {}
        members = firewall.members(states.values())
        rules = {iid: firewall.ruleset(states[iid], groups, members) for iid in wanted}
        for iid in [i for i in self.machines if i not in wanted
                    or wanted[i].ip != self.machines[i].spec.ip]:
            state = states.get(iid, {}).get("State", {}).get("Name", "gone")
            self._remove(iid, keep_disk=state in ("stopping", "stopped"), why=state)
            changed = True
        for iid, inst in states.items():  # a stopped instance terminated: its disk goes
            if inst["State"]["Name"] == "terminated" and iid not in self.machines:
                node = self.cloud.workdir / "nodes" / host_name(iid)
                if node.exists():
                    self.deleter.take(node)
        for iid, want in wanted.items():
            if iid in self.machines:
                continue
            if time.monotonic() - self._failed_at.get(iid, -RETRY_AFTER_S) < RETRY_AFTER_S:
                continue
            changed |= self._add(want, rules[iid])
        for iid, machine in self.machines.items():
            if self._rules.get(iid) != rules[iid]:
                self._firewall(machine, rules[iid])
            if (machine.spec.memory_mb is not None and not machine.memory_reported
                    and self.provider.settle(machine)):
                self.log(f"instance {iid}: /proc/meminfo says {machine.spec.memory_mb} MB")
        if changed:
            self.write_records()
        return changed

    def _power_events(self) -> bool:
        """Machines that rebooted boot again; those that powered off are stopped or
        terminated in moto (the instance's shutdown behaviour), as EC2 does."""
        changed = False
        for iid, machine in list(self.machines.items()):
            state = self.provider.power_state(machine)
            if state == machines.REBOOTING:
                self.log(f"instance {iid}: rebooted inside; booting it again")
                self.provider.boot(machine)
                changed = True
            elif state == machines.OFF:
                behaviour = shutdown_behaviour(self.ec2, iid)
                self.log(f"instance {iid}: powered itself off; shutdown behaviour "
                         f"{behaviour!r}")
                if behaviour == "terminate":
                    self.ec2.terminate_instances(InstanceIds=[iid])
                else:
                    self.ec2.stop_instances(InstanceIds=[iid])
                self._remove(iid, keep_disk=behaviour != "terminate", why="powered off")
                changed = True
        return changed

    def _firewall(self, machine: machines.Machine, table: str) -> None:
        """The instance's security groups as its machine's firewall (firewall.py)."""
        firewall.apply(machine.namespace, table)
        first = machine.spec.instance_id not in self._rules
        self._rules[machine.spec.instance_id] = table
        self.log(f"instance {machine.spec.instance_id}: security groups "
                 f"{'applied' if first else 'changed, applied again'}")

    def _add(self, want: Wanted, table: str) -> bool:
        name = host_name(want.instance_id)
        offset = int(ipaddress.IPv4Address(want.ip)) - int(self.cloud.subnet.network_address)
        core = one_core(offset)
        size = self._resources(want.instance_type)
        spec = machines.MachineSpec(
            name=name, instance_id=want.instance_id, ip=want.ip,
            public_keys=(want.public_key,), user_data=user_data(self.ec2, want.instance_id),
            core=core, cpus=resources.cpu_list(core, size.cores) if size else None,
            memory_mb=size.memory_mb if size else None)
        machine = None
        try:
            machine = self.provider.create(spec)
            # Before it boots: no moment where the machine is up and unfiltered, and its
            # user data may ask for its credentials at once.
            self._firewall(machine, table)
            self._serve_metadata(machine)
            self.provider.boot(machine)
        except Exception as exc:  # one bad instance must not stop the others' machines
            self._failed_at[want.instance_id] = time.monotonic()
            self._rules.pop(want.instance_id, None)
            self.log(f"instance {want.instance_id} at {want.ip}: machine failed to start: "
                     f"{exc}")
            self._stop_metadata(want.instance_id)
            if machine is not None:
                self.provider.destroy(machine)
            return False
        self._failed_at.pop(want.instance_id, None)
        self.machines[want.instance_id] = machine
        sized = (f"{size.cores} core(s) ({spec.cpus or spec.core}), {size.memory_mb} MB"
                 if size else f"core {spec.core}")
        self.log(f"instance {want.instance_id}: booting at {want.ip} (namespace "
                 f"{machine.namespace}, nspawn pid {machine.pid}, {want.instance_type}: "
                 f"{sized})")
        return True

    def _resources(self, instance_type: str) -> resources.Resources | None:
        """The instance type's cores and memory, scaled to this machine (resources.py)."""
        if instance_type not in self._sizes:
            self._sizes[instance_type] = resources.of_type(
                self.ec2, instance_type, len(os.sched_getaffinity(0)))
        return self._sizes[instance_type]

    def _serve_metadata(self, machine: machines.Machine) -> None:
        """IMDSv2 at 169.254.169.254 inside the machine's namespace (imds.py): its identity
        and its instance profile's credentials from moto, as EC2's metadata service."""
        if self._metadata_clients is None or self._credentials is None:
            return
        iid = machine.spec.instance_id
        ec2, iam, _ = self._metadata_clients
        server = imds.MetadataServer(
            imds.listen_in_namespace(machine.namespace), imds.MotoIdentity(ec2, iam, iid),
            self._credentials, lambda line: self.log(f"instance {iid}: {line}"))
        server.start()
        self._metadata[iid] = server

    def _stop_metadata(self, instance_id: str) -> None:
        # Before the namespace goes: an open socket would keep it alive unnamed.
        server = self._metadata.pop(instance_id, None)
        if server is not None:
            server.stop()
        if self._credentials is not None:
            self._credentials.forget(instance_id)

    def _remove(self, instance_id: str, *, keep_disk: bool = False, why: str = "") -> None:
        machine = self.machines.pop(instance_id)
        self._rules.pop(instance_id, None)
        self._stop_metadata(instance_id)
        t0 = time.monotonic()
        stubborn = self.provider.destroy(machine, keep_disk=True)
        if not keep_disk:
            self.deleter.take(machine.node_dir)
        note = f"; pids that would not stop: {stubborn}" if stubborn else ""
        self.log(f"instance {instance_id} ({why}): machine {machine.spec.ip} shut down in "
                 f"{time.monotonic() - t0:.1f}s{', disk kept' if keep_disk else ''}{note}")

    def remove_all(self) -> None:
        ids = list(self.machines)
        # Shut down in parallel: each takes seconds, the cloud waits for the slowest.
        with ThreadPoolExecutor(max_workers=max(1, len(ids))) as pool:
            list(pool.map(lambda iid: self._remove(iid, why="cloud stopping"), ids))
        self.write_records()

    def write_records(self) -> None:
        workdir = self.cloud.workdir
        doc = {iid: asdict(HostRecord(iid, m.spec.ip, m.namespace, m.pid or 0, m.boots,
                                      str(m.console_path)))
               for iid, m in sorted(self.machines.items())}
        write_atomic(workdir / HOSTS_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def moto_client(service: str, endpoint: str, workdir: Path, region: str = LOCAL_REGION) -> Any:
    """A client signed as the cloud's admin (principals.py): the hypervisor and EC2's
    metadata service, which on AWS are not IAM callers at all."""
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name=region,
                        **principals.credentials(workdir, principals.ADMIN))


def moto_ec2(endpoint: str, workdir: Path, region: str = LOCAL_REGION) -> Any:
    return moto_client("ec2", endpoint, workdir, region)


class _Log:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.path.open("a") as fh:
            fh.write(f"{stamp} {message}\n")


def run(prefix: str, subnet: str, workdir: Path, *, port: int | None = None,
        stop: threading.Event | None = None) -> int:
    """The watcher's life: cloud up, moto up, poll until stopped, everything down."""
    stop = stop or threading.Event()
    workdir.mkdir(parents=True, exist_ok=True)
    log = _Log(workdir / LOG_FILE)
    cloud = LocalCloud(prefix, subnet, workdir=workdir)
    try:
        image = ensure_image(say=log)
        cloud.up()  # takes the cloud's lock: from here on the work directory is ours
        nat.add(prefix, str(cloud.subnet), cloud.names.bridge)
    except Exception as exc:
        log(f"watcher {os.getpid()} not started: {exc}")
        try:
            cloud.down()
        except Exception as cleanup:  # say both: the cause, and what is left
            log(f"cleanup incomplete: {cleanup}")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _clear(workdir)
    write_atomic(workdir / PID_FILE, f"{os.getpid()}\n")
    code = 0
    deleter = Deleter(workdir / "trash", log)
    watcher: Watcher | None = None
    try:
        endpoint = cloud.start_moto(port, console_dir=workdir / CONSOLE_DIR)
        principals.enable(endpoint, workdir)  # IAM decides from here on, before any node
        provider = machines.NspawnProvider(
            image, workdir, cloud.names, cloud.bridge_ip, cloud.subnet.prefixlen,
            workdir / CONSOLE_DIR, int(cloud.subnet.network_address))
        watcher = Watcher(cloud, moto_ec2(endpoint, workdir), provider, log, deleter,
                          metadata_clients=(moto_ec2(endpoint, workdir),
                                            moto_client("iam", endpoint, workdir),
                                            moto_client("sts", endpoint, workdir)))
        watcher.write_records()
        write_atomic(workdir / CLOUD_FILE, json.dumps({
            "prefix": prefix, "subnet": str(cloud.subnet), "bridge_ip": cloud.bridge_ip,
            "endpoint_url": endpoint, "region": LOCAL_REGION, "watcher_pid": os.getpid(),
            "moto_pid": cloud.moto_pid}, indent=2) + "\n")
        log(f"local cloud {prefix} ready: bridge {cloud.bridge_ip} ({cloud.subnet}), "
            f"moto_server {endpoint}")
        while not stop.is_set():
            try:
                watcher.sync()
            except Exception as exc:  # moto busy: log, keep the hosts, retry
                log(f"poll failed: {type(exc).__name__}: {exc}")
                if cloud._moto is not None and cloud._moto.poll() is not None:
                    log("moto_server has exited; stopping the local cloud")
                    code = 1
                    break
            stop.wait(POLL_S)
    except Exception as exc:
        log(f"watcher failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        log("stopping: shutting down every machine; moto_server, NAT and the bridge")
        try:
            if watcher is not None:
                watcher.remove_all()
            cloud.down()  # its sweep also removes the NAT table
        except Exception as exc:
            log(f"cleanup incomplete: {exc}")
            code = 1
        if deleter.pending():
            log(f"deleting the files of {deleter.pending()} removed host(s)")
        deleter.finish()
        _clear(workdir)
        log(f"stopped (exit {code})")
    return code


def _clear(workdir: Path) -> None:
    for name in (CLOUD_FILE, HOSTS_FILE, PID_FILE):
        (workdir / name).unlink(missing_ok=True)
    principals.forget(workdir)
    shutil.rmtree(workdir / CONSOLE_DIR, ignore_errors=True)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--subnet", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=None, help="moto_server port")
    args = parser.parse_args(list(argv) if argv is not None else None)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run(args.prefix, args.subnet, args.workdir.resolve(), port=args.port, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
