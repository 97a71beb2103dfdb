"""Inventory records for a local cloud, so the install can run without the AWS provisioning."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node
from sparkfab.localcloud.hosts import LOCAL_REGION, Host, LocalCloud

LOCAL_INSTANCE_TYPE = "local"  # sized from the machine's own cores/memory, not a table


def inventory_for(
    cloud: LocalCloud,
    hosts: Sequence[Host],
    cluster: str,
    *,
    bucket: str = "",
    private_key_path: str = "",
    region: str = LOCAL_REGION,
    spark_secret: str | None = None,
) -> Inventory:
    """An Inventory of `hosts`: the first is the master, the rest are workers.

    SSH goes to the private IPs as root (the local cloud has no public addresses); S3 is
    the cloud's moto_server. The Spark secret is fresh unless one is given.
    """
    if not hosts:
        raise ValueError("an inventory needs at least a master host")
    nodes = [
        Node(
            role=ROLE_MASTER if i == 0 else ROLE_WORKER,
            instance_id=f"local-{cloud.prefix}-{h.name}",
            instance_type=LOCAL_INSTANCE_TYPE,
            private_ip=h.ip,
            name=h.name,
        )
        for i, h in enumerate(hosts)
    ]
    return Inventory(
        cluster=cluster,
        region=region,
        ssh_user="root",
        nodes=nodes,
        ssh_address="private",
        private_key_path=private_key_path,
        bucket=bucket,
        endpoint_url=cloud.moto_endpoint,
        spark_secret=spark_secret or secrets.token_hex(32),
        # These hosts share this machine's kernel: nothing on them may power it off.
        extra={"local_cloud": cloud.prefix, "shared_kernel": True},
    )
