"""What an instance type gives a local-cloud machine: its cores and memory, scaled down.

On EC2 a node's size is its instance type's, and sparkfab sizes each Spark worker from the
node itself (`nproc`, /proc/meminfo: sizing.py). Here every machine shares this one, so a
machine gets a quarter of its type (SCALE), at least one core and MIN_MEMORY_MB, at most
what this machine has: a master m6i.large (2 vCPUs, 8 GiB) is 1 core and 2 GiB, a worker
m6i.xlarge (4 vCPUs, 16 GiB) 1 core and 4 GiB, so a master and two workers fit the test
machine's 2 cores and 24 GiB with room for moto and the test itself.

- cores: the machine is pinned to that many of this machine's cores (taskset), so `nproc`
  inside answers the scaled count, as it answers the vCPUs on EC2;
- memory: /proc/meminfo inside the machine is a file saying the scaled size (bind-mounted
  over it in the machine's own mount namespace once its systemd runs), so every reader of
  it, sizing.py's first, sees the type's memory. It is a report, not a limit: this
  kernel's memory controller sits on the host's cgroup v1 side, where the machines' cgroups
  are not (ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCALE = 4
MIN_MEMORY_MB = 1024
# Where the machine's meminfo file lives inside it (its overlay's upper layer).
MEMINFO_PATH = "var/lib/sparkfab-instance/meminfo"


@dataclass(frozen=True)
class Resources:
    cores: int
    memory_mb: int


def scaled(vcpus: int, memory_mib: int, host_cores: int, host_memory_mb: int) -> Resources:
    """The type's vCPUs and memory divided by SCALE, within [1 core, MIN_MEMORY_MB] and
    this machine's own."""
    cores = max(1, min(host_cores, vcpus // SCALE))
    memory = max(MIN_MEMORY_MB, min(host_memory_mb, memory_mib // SCALE))
    return Resources(cores, memory)


def host_memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def of_type(ec2: Any, instance_type: str, host_cores: int) -> Resources | None:
    """The scaled resources of `instance_type` as moto describes it; None if unknown."""
    from botocore.exceptions import ClientError

    try:
        found = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except ClientError:
        return None
    if not found:
        return None
    info = found[0]
    return scaled(int(info["VCpuInfo"]["DefaultVCpus"]), int(info["MemoryInfo"]["SizeInMiB"]),
                  host_cores, host_memory_mb())


def cpu_list(first: int | None, count: int) -> str | None:
    """`count` of this machine's cores from the one at `first` on (round robin), for
    taskset; None when nothing is pinned (one core, or no taskset)."""
    cores = sorted(os.sched_getaffinity(0))
    if first is None or len(cores) < 2 or shutil.which("taskset") is None:
        return None
    start = cores.index(first) if first in cores else 0
    picked = [cores[(start + i) % len(cores)] for i in range(min(count, len(cores)))]
    return ",".join(str(c) for c in sorted(picked))


def meminfo(memory_mb: int) -> str:
    """A /proc/meminfo saying `memory_mb` in all, most of it available (the layout tools
    parse: `Name:   value kB`)."""
    total = memory_mb * 1024
    fields = {"MemTotal": total, "MemFree": total * 9 // 10, "MemAvailable": total * 9 // 10,
              "Buffers": 0, "Cached": 0, "SwapCached": 0, "SwapTotal": 0, "SwapFree": 0}
    return "".join(f"{name + ':':<16}{value:>8} kB\n" for name, value in fields.items())


def init_pid(pids: list[int]) -> int | None:
    """The machine's PID 1 among its cgroup's pids, once it is systemd (by then nspawn has
    mounted the machine's /proc)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            nspid = next((line.split()[1:] for line in status.splitlines()
                          if line.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == "1" and \
                    Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return pid
    return None


def report_memory(pid: int) -> bool:
    """Bind the machine's meminfo file over its /proc/meminfo, inside its mount namespace
    (entered through its PID 1): only the machine sees it. True when done."""
    proc = subprocess.run(["nsenter", f"--target={pid}", "--mount", "--", "mount", "--bind",
                           f"/{MEMINFO_PATH}", "/proc/meminfo"],
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0
