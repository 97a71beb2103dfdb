"""The local cloud: real SSH hosts in network namespaces plus moto, standing in for EC2 and S3.

Used by the test fixtures (tests/cluster/conftest.py) and by the `fab local-cloud-*` tasks.
"""

from sparkfab.localcloud.hosts import Host, LocalCloud, derived_subnet, missing_requirements
from sparkfab.localcloud.keys import Keypair, make_keypair
from sparkfab.localcloud.records import inventory_for

__all__ = [
    "Host",
    "Keypair",
    "LocalCloud",
    "derived_subnet",
    "inventory_for",
    "make_keypair",
    "missing_requirements",
]
