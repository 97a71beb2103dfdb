"""How many cores and how much memory a worker offers Spark: the node's own, minus a reserve.

Measured on the node itself (`nproc`, /proc/meminfo), so it is right for any instance type
and for the local cloud alike; settings `worker_cores` / `worker_memory_mb` override it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparkfab.errors import UserError

# Left to the OS, the worker daemon's own JVM and the Python workers' native memory.
OS_RESERVE_MIN_MB = 1024
OS_RESERVE_FRACTION = 0.10
MIN_WORKER_MEMORY_MB = 512
# Prints "<cores> <MemTotal kB> <systemd|none>": the facts a node is sized from.
FACTS_COMMAND = (
    "echo $(nproc) $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) "
    "$([ -d /run/systemd/system ] && echo systemd || echo none)"
)


@dataclass(frozen=True)
class NodeFacts:
    cores: int
    memory_mb: int
    systemd: bool

    @classmethod
    def parse(cls, text: str) -> NodeFacts:
        parts = text.split()
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ValueError(f"unexpected node facts: {text!r}")
        return cls(int(parts[0]), int(parts[1]) // 1024, parts[2] == "systemd")


@dataclass(frozen=True)
class WorkerResources:
    cores: int
    memory_mb: int


def worker_resources(facts: NodeFacts, settings: Any = None) -> WorkerResources:
    """What a worker with these facts offers; settings can fix either number."""
    cores = getattr(settings, "worker_cores", None) or facts.cores
    reserve = max(OS_RESERVE_MIN_MB, int(facts.memory_mb * OS_RESERVE_FRACTION))
    memory = getattr(settings, "worker_memory_mb", None) or facts.memory_mb - reserve
    if memory < MIN_WORKER_MEMORY_MB:
        raise UserError(
            f"a worker would offer Spark only {memory} MB ({facts.memory_mb} MB total, "
            f"{reserve} MB kept for the OS)",
            hint="use a worker instance type with more memory, or set worker_memory_mb",
        )
    if cores < 1:
        raise UserError(f"worker_cores must be at least 1, not {cores}")
    return WorkerResources(int(cores), int(memory))
