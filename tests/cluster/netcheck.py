"""What the cluster tests ask of a booted cloud's network and files: a host outside the
security group, TCP probes from any vantage point, the ports a node listens on, and a
search of a node's files and processes for AWS keys. Only the cloud's own addresses are
ever probed, a bounded number of times with a one-second timeout each."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from sparkfab.localcloud import machines, netns

PROBE_TIMEOUT_S = 1.0
# Every (ip, port) at once, one thread each: a dropped SYN costs the whole timeout.
PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    try:
        socket.create_connection((target[0], target[1]), timeout=float(sys.argv[1])).close()
        return True
    except OSError:
        return False
targets = json.loads(sys.stdin.read())
with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""
# AWS credentials as they would sit in a file. Anywhere: an access key id (long-term AKIA,
# temporary ASIA; AWS's documentation examples end in EXAMPLE and are no key).
KEY_ID_PATTERN = r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"
# In configuration (everything but installed software, whose SDK sources assign these names
# all the time): a value given to a variable, profile entry or s3a property carrying a key.
ASSIGNED_PATTERN = (r"(AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)|"
                    r"aws_secret_access_key|aws_access_key_id|aws_session_token|"
                    r"fs\.s3a\.(access|secret|session)\.key)[\"']?[[:space:]]*[=:[:space:]]"
                    r"[[:space:]]*[\"']?[A-Za-z0-9/+]{4,}")
SOFTWARE_DIRS = ("site-packages", "dist-packages", "wheelhouse", "jars", "__pycache__")
ENV_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

Runner = Callable[[list[str], str], str]  # argv, stdin -> stdout


def probe_from(run: Runner, python: str, targets: list[tuple[str, int]],
               timeout_s: float = PROBE_TIMEOUT_S) -> dict[tuple[str, int], bool]:
    """Which of `targets` accept a TCP connection, as seen by whatever `run` runs in."""
    if not targets:
        return {}
    out = run([python, "-c", PROBE, str(timeout_s)], json.dumps(targets))
    return dict(zip(targets, json.loads(out.strip().splitlines()[-1]), strict=True))


def local_runner(argv: list[str], stdin: str) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True,
                          timeout=60).stdout


def namespace_runner(namespace: str) -> Runner:
    def run(argv: list[str], stdin: str) -> str:
        return local_runner(["ip", "netns", "exec", namespace, *argv], stdin)
    return run


@contextlib.contextmanager
def outsider(prefix: str, subnet: str, offset: int = 250) -> Iterator[tuple[str, str]]:
    """A host on the cloud's bridge, inside its subnet but outside operator_cidr and every
    security group: (namespace, ip). Removed on exit, whatever happened."""
    names = netns.Names(prefix)
    net = ipaddress.IPv4Network(subnet)
    ip = str(net.network_address + offset)
    ns = names.namespace("outsider")
    outer = names.veth_outer(offset)
    try:
        netns.create_namespace(ns, names.bridge, outer, names.veth_inner_tmp(offset),
                               ipaddress.IPv4Interface(f"{ip}/{net.prefixlen}"))
        yield ns, ip
    finally:
        netns.delete_namespace(ns, outer)


def listening_ports(ss_output: str) -> set[int]:
    """TCP ports listening on an address reachable from outside the node (not loopback),
    from `ss -Htln`."""
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        address, _, port = fields[3].rpartition(":")
        address = address.strip("[]")
        if address.startswith("127.") or address in ("::1", "169.254.169.254"):
            continue
        if port.isdigit():
            ports.add(int(port))
    return ports


def _ere_literal(text: str) -> str:
    """`text` as a grep -E pattern matching exactly it."""
    return re.sub(r"([.\[\]{}()\\*+?^$|])", r"\\\1", text)


def _grep(argv: list[str], root: Path) -> set[str]:
    """The files under `root` with a match. Only their paths: a finding never repeats the
    key it found (a test's failure message is a log too)."""
    out = subprocess.run(["grep", "-rIo", "-E", "--devices=skip", *argv, str(root)],
                         capture_output=True, text=True, timeout=600)
    return {line.split(":", 1)[0] for line in out.stdout.splitlines()
            if ":" in line and not line.rstrip().endswith("EXAMPLE")}


def key_findings(upper: Path, cgroup: Path, secrets: list[str]) -> list[str]:
    """Where AWS keys show on a machine: every file it wrote (its overlay's upper layer; the
    image below is built from Debian packages with none) holding an access key id or one of
    `secrets` (the credentials its metadata service handed out), configuration assigning a
    key, and every process of it with a key variable or secret in its environment."""
    excluded = [f"--exclude-dir={d}" for d in SOFTWARE_DIRS]
    # Key ids and the secrets in one pass over the layer (gigabytes: the venv is in it).
    anywhere = [KEY_ID_PATTERN, *(_ere_literal(s) for s in secrets)]
    files = _grep([a for pattern in anywhere for a in ("-e", pattern)], upper)
    files |= _grep([*excluded, "-e", ASSIGNED_PATTERN], upper)
    found = [f"file {path}" for path in sorted(files)]
    for pid in machines.cgroup_pids(cgroup):
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            names = {e.split(b"=", 1)[0].decode(errors="replace") for e in env if b"=" in e}
            values = b"\0".join(env)
            if names & set(ENV_NAMES) or any(s.encode() in values for s in secrets):
                found.append(f"process {pid} environment")
    return found
