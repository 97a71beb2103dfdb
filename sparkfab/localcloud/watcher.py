"""The local cloud's "hypervisor": every running moto instance gets a real host, and loses it.

Runs as a background process (started by `fab local-cloud-up`, stopped by pid through
`fab local-cloud-down`):

    python -m sparkfab.localcloud.watcher --prefix sf --subnet 10.77.0.0/24 --workdir DIR

It owns the whole cloud: the bridge, moto_server on the bridge address, and one host per
instance. Every POLL_S it asks moto for the instances: a running one in the cloud's subnet
gets a network namespace at its private IP (moto hands them out in order, .4, .5, ...) with
sshd accepting the public key of the instance's key pair; a terminated or stopped one loses
its host. What it runs is recorded in the work directory:

  watcher.pid   its pid (removed when it stops)
  cloud.json    endpoint, subnet, region: written once moto answers ("ready")
  hosts.json    instance id -> ip, namespace, sshd pid and the host's known_hosts line
  known_hosts   those lines: what a client may trust, and nothing else
  watcher.log   what it did, one timestamped line per event

SIGTERM (or SIGINT) stops it: every host and moto_server are stopped by pid, the bridge is
deleted, and the pid file removed.
"""

from __future__ import annotations

import argparse
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

from sparkfab.localcloud.hosts import LOCAL_REGION, MOTO_CREDENTIALS, LocalCloud

POLL_S = 0.5
# A host that failed to start is retried after this long, not on every poll.
RETRY_AFTER_S = 5.0
DELETE_THREADS = 4
PID_FILE = "watcher.pid"
CLOUD_FILE = "cloud.json"
HOSTS_FILE = "hosts.json"
KNOWN_HOSTS_FILE = "known_hosts"
LOG_FILE = "watcher.log"


@dataclass(frozen=True)
class Wanted:
    """A running moto instance that should have a host."""

    instance_id: str
    ip: str
    public_key: str


@dataclass(frozen=True)
class HostRecord:
    instance_id: str
    ip: str
    namespace: str
    sshd_pid: int
    known_hosts_line: str


def write_atomic(path: Path, text: str) -> None:
    """Readers (provision, tests) never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def host_name(instance_id: str) -> str:
    """The harness's host name for an instance: its id (unique, and what moto reports)."""
    return instance_id.lower()


def wanted_instances(ec2: Any, subnet: ipaddress.IPv4Network,
                     log: Any = print) -> dict[str, Wanted]:
    """Running instances in `subnet`, each with the public key of its key pair."""
    keys: dict[str, str | None] = {}
    out: dict[str, Wanted] = {}
    for page in ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["running"]}]
    ):
        for res in page["Reservations"]:
            for inst in res["Instances"]:
                ip = inst.get("PrivateIpAddress")
                if not ip or ipaddress.IPv4Address(ip) not in subnet:
                    continue
                key_name = inst.get("KeyName")
                if key_name and key_name not in keys:
                    keys[key_name] = _public_key(ec2, key_name)
                public_key = keys.get(key_name) if key_name else None
                if not public_key:
                    log(f"instance {inst['InstanceId']} at {ip}: no imported key pair "
                        f"({key_name or 'none given'}); it gets no host")
                    continue
                out[inst["InstanceId"]] = Wanted(inst["InstanceId"], ip, public_key)
    return out


def _public_key(ec2: Any, key_name: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        pairs = ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"]
    except ClientError:
        return None
    return str(pairs[0].get("PublicKey") or "").strip() or None if pairs else None


class Deleter:
    """Deletes removed hosts' files in the background, several at once.

    An installed node holds gigabytes (Spark, a Python env with TensorFlow); deleting them
    took minutes here (ext4 mounted with `discard`: every freed extent waits for the
    disk, so deletions overlap well). A terminated instance's host stops and leaves the
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
    """Keeps `cloud.hosts` equal to moto's running instances."""

    def __init__(self, cloud: LocalCloud, ec2: Any, log: Any = print,
                 deleter: Deleter | None = None) -> None:
        self.cloud = cloud
        self.ec2 = ec2
        self.log = log
        self.deleter = deleter or Deleter(cloud.workdir / "trash", log)
        self.records: dict[str, HostRecord] = {}
        self._failed_at: dict[str, float] = {}

    def sync(self) -> bool:
        """One poll: remove hosts of gone instances, then add hosts for new ones.
        True when something changed."""
        wanted = wanted_instances(self.ec2, self.cloud.subnet, self.log)
        changed = False
        for iid in [i for i in self.records if i not in wanted
                    or wanted[i].ip != self.records[i].ip]:
            self._remove(iid)
            changed = True
        for iid, want in wanted.items():
            if iid in self.records:
                continue
            if time.monotonic() - self._failed_at.get(iid, -RETRY_AFTER_S) < RETRY_AFTER_S:
                continue
            changed |= self._add(want)
        if changed:
            self.write_records()
        return changed

    def _add(self, want: Wanted) -> bool:
        t0 = time.monotonic()
        try:
            host = self.cloud.add_host(host_name(want.instance_id), want.ip, [want.public_key])
        except Exception as exc:  # one bad instance must not stop the others' hosts
            self._failed_at[want.instance_id] = time.monotonic()
            self.log(f"instance {want.instance_id} at {want.ip}: host failed to start: {exc}")
            self.cloud.remove_host(host_name(want.instance_id))
            return False
        self._failed_at.pop(want.instance_id, None)
        self.records[want.instance_id] = HostRecord(
            want.instance_id, host.ip, host.namespace, host.sshd_pid, host.host_public_key)
        self.log(f"instance {want.instance_id}: host up at {host.ip} (namespace "
                 f"{host.namespace}, sshd pid {host.sshd_pid}, {time.monotonic() - t0:.1f}s)")
        return True

    def _remove(self, instance_id: str) -> None:
        record = self.records.pop(instance_id)
        name = host_name(instance_id)
        # Its files go first (a rename: the running sshd keeps what it has open), so the
        # host is stopped and off the network without waiting for gigabytes to be deleted.
        self.deleter.take(self.cloud.workdir / "nodes" / name)
        stubborn = self.cloud.remove_host(name)
        note = f"; pids that would not stop: {stubborn}" if stubborn else ""
        self.log(f"instance {instance_id}: no longer running, host {record.ip} removed{note}")

    def remove_all(self) -> None:
        for iid in list(self.records):
            self._remove(iid)
        self.write_records()

    def write_records(self) -> None:
        workdir = self.cloud.workdir
        doc = {iid: asdict(r) for iid, r in sorted(self.records.items())}
        write_atomic(workdir / HOSTS_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n")
        write_atomic(workdir / KNOWN_HOSTS_FILE,
                     "".join(r.known_hosts_line + "\n" for r in self.records.values()))


def moto_ec2(endpoint: str, region: str = LOCAL_REGION) -> Any:
    import boto3

    return boto3.client("ec2", endpoint_url=endpoint, region_name=region, **MOTO_CREDENTIALS)


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
        cloud.up()  # takes the cloud's lock: from here on the work directory is ours
    except Exception as exc:
        log(f"watcher {os.getpid()} not started: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _clear(workdir)
    write_atomic(workdir / PID_FILE, f"{os.getpid()}\n")
    code = 0
    deleter = Deleter(workdir / "trash", log)
    watcher: Watcher | None = None
    try:
        endpoint = cloud.start_moto(port)
        watcher = Watcher(cloud, moto_ec2(endpoint), log, deleter)
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
        log("stopping: removing every host, moto_server and the bridge")
        try:
            if watcher is not None:
                watcher.remove_all()
            cloud.down()
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
    for name in (CLOUD_FILE, HOSTS_FILE, KNOWN_HOSTS_FILE, PID_FILE):
        (workdir / name).unlink(missing_ok=True)


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
