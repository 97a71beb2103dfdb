"""The operator's handles on a provisioned cluster: its inventory, S3 and SSH.

Every task that works on a running cluster starts here, so "no such cluster" and the
client settings read the same everywhere. The inventory wins over the settings for the
facts it records (region, endpoint): they are what the cluster was really built with.
"""

from __future__ import annotations

from typing import Any

from sparkfab import inventory
from sparkfab.aws.session import AwsSession
from sparkfab.config import Settings
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory
from sparkfab.remote import Remote


def load(settings: Settings) -> Inventory | None:
    """The cluster's inventory, or None when it was never provisioned here."""
    return inventory.load(settings.cluster)


def require(settings: Settings) -> Inventory:
    inv = load(settings)
    if inv is None:
        raise UserError(
            f"no cluster {settings.cluster!r} here ({inventory.path_for(settings.cluster)} "
            "not found)",
            "run `fab provision` first, or name the cluster with --cluster",
        )
    if not any(n.role == inventory.ROLE_MASTER for n in inv.nodes):
        raise UserError(f"cluster {inv.cluster!r} has no master in its inventory",
                        "run `fab provision` again to complete it")
    return inv


def s3_client(settings: Settings, inv: Inventory | None = None) -> Any:
    """boto3 S3 for the cluster's region and endpoint (moto_server in the local cloud)."""
    if inv is not None:
        settings = settings.replace(region=inv.region,
                                    endpoint_url=inv.endpoint_url or settings.endpoint_url)
    return AwsSession(settings).client("s3")


def remote(inv: Inventory, out: Any = print) -> Remote:
    """Fabric connections to the nodes, host keys from the cluster's known_hosts only."""
    return Remote(inv, known_hosts=inventory.known_hosts_path(inv.cluster), out=out,
                  boot_deadline_s=30.0)
