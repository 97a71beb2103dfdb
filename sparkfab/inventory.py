"""inventory/<cluster>.json: the one record of what a cluster is made of.

Written by `fab provision` (mode 0600, it holds the Spark RPC secret), read by every other
task, removed by `fab teardown`. Nothing here is an AWS credential.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparkfab import private_json

INVENTORY_DIR = Path(os.environ.get("SPARKFAB_INVENTORY_DIR", "inventory"))
ROLE_MASTER = "master"
ROLE_WORKER = "worker"


@dataclass
class Node:
    role: str  # ROLE_MASTER or ROLE_WORKER
    instance_id: str
    instance_type: str
    private_ip: str
    public_ip: str | None = None
    name: str = ""  # e.g. "master", "worker-1"
    lifecycle: str = "on-demand"  # or "spot"
    launched_at: str = ""  # ISO 8601, UTC


@dataclass
class Inventory:
    cluster: str
    region: str
    ssh_user: str
    nodes: list[Node] = field(default_factory=list)
    ssh_address: str = "public"  # which IP SSH uses: "public" or "private"
    key_name: str = ""
    private_key_path: str = ""  # the operator's key on this machine; never uploaded
    bucket: str = ""
    bucket_created: bool = False  # False when the user's existing bucket was reused
    security_group_id: str = ""
    vpc_id: str = ""
    subnet_id: str = ""
    instance_profile: str = ""
    role_name: str = ""
    policy_name: str = ""
    endpoint_url: str | None = None  # set only for the local cloud (moto_server)
    spark_secret: str = ""  # Spark RPC auth secret, generated at provision time
    created_at: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def master(self) -> Node:
        return next(n for n in self.nodes if n.role == ROLE_MASTER)

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if n.role == ROLE_WORKER]

    def address(self, node: Node) -> str:
        """The address SSH (and the operator's tunnels) use for a node."""
        if self.ssh_address == "private" or not node.public_ip:
            return node.private_ip
        return node.public_ip

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Inventory:
        raw = dict(data)
        nodes = [Node(**n) for n in raw.pop("nodes", [])]  # type: ignore[arg-type]
        known = {f for f in cls.__dataclass_fields__}
        return cls(nodes=nodes, **{k: v for k, v in raw.items() if k in known})


def path_for(cluster: str, directory: Path | None = None) -> Path:
    return (directory or INVENTORY_DIR) / f"{cluster}.json"


def known_hosts_path(cluster: str, directory: Path | None = None) -> Path:
    """SSH host keys of the cluster's nodes, kept next to its inventory."""
    return (directory or INVENTORY_DIR) / f"{cluster}.known_hosts"


def save(inv: Inventory, directory: Path | None = None) -> Path:
    path = path_for(inv.cluster, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    return private_json.write(path, inv.to_dict())  # it holds the Spark secret


def load(cluster: str, directory: Path | None = None) -> Inventory | None:
    path = path_for(cluster, directory)
    if not path.exists():
        return None
    return Inventory.from_dict(json.loads(path.read_text()))


def remove(cluster: str, directory: Path | None = None) -> None:
    for p in (path_for(cluster, directory), known_hosts_path(cluster, directory)):
        p.unlink(missing_ok=True)
