"""`fab logs`: every node's Spark logs, fetched over SSH into a local folder per node.

Each node packs its logs into one tarball (templates/collect-logs.sh.j2, run as root: the
logs belong to the service user), which is downloaded and unpacked here under
<dest>/<node name>/: daemons/ (master or worker, idle guard), apps/<app id>/<executor>/
{stdout,stderr}, idle-guard.json. The driver's log of each `fab run-job` is already kept
locally by run-job itself.
"""

from __future__ import annotations

import shlex
import tarfile
import time
from pathlib import Path
from typing import Any

from sparkfab import idleguard, spark
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory, Node
from sparkfab.layout import LAYOUT, Layout
from sparkfab.remote import HOME_DIR
from sparkfab.render import render

UNITS = ("spark-master", "spark-worker", idleguard.UNIT)


def default_dest(inv: Inventory) -> Path:
    return Path("logs") / inv.cluster / time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def collect_script(
    node: Node, archive: str, owner: str, layout: Layout = LAYOUT,
    guard_state: str = idleguard.STATE_FILE,
) -> str:
    return render(
        "collect-logs.sh",
        node_name=node.name,
        archive=archive,
        owner=owner,
        units=[u for u in UNITS if u == idleguard.UNIT or u == spark.service_name(node)],
        log_dir=layout.log_dir,
        work_dir=layout.work_dir,
        guard_state=guard_state,
    )


def unpack(archive: Path, dest: Path) -> int:
    """Unpack a node's tarball safely (no absolute paths, links or devices); file count."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isdir() or m.isreg()]
        for m in members:
            target = (dest / m.name).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise UserError(f"refusing {m.name!r} in {archive.name}: outside {dest}")
        tar.extractall(dest, members=members, filter="data")
    return sum(1 for m in members if m.isreg())


def fetch_node(remote: Any, inv: Inventory, node: Node, dest: Path) -> int:
    """Collect on the node, download, unpack under dest/<node name>; returns the file count."""
    # In the SSH user's private ~/.sparkfab (run_script makes it 0700), not a shared /tmp.
    archive = f"{HOME_DIR}/logs-{node.instance_id}-{time.time_ns()}.tgz"
    script = collect_script(node, archive, inv.ssh_user)
    result = remote.run_script(node, "collect-logs", script, timeout=300)
    if not result.ok:
        raise UserError(
            f"{node.name}: collecting logs failed ({result.error or f'exit {result.exit_code}'})",
            " | ".join(result.tail[-3:]) or "run `fab ssh --node " + node.name + "` to look",
        )
    local_tgz = dest / f".{node.name}.tgz"
    dest.mkdir(parents=True, exist_ok=True)
    conn = remote.connection(node)
    try:
        conn.get(archive, str(local_tgz))
    finally:
        conn.run(f"rm -f {shlex.quote(archive)}", hide=True, warn=True, in_stream=False)
    try:
        return unpack(local_tgz, dest / (node.name or node.instance_id))
    finally:
        local_tgz.unlink(missing_ok=True)
