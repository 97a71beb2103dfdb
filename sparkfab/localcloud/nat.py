"""Outbound access for the nodes: NAT for the cloud's subnet only, as a VPC's NAT gateway.

The nodes install packages from the Debian registry (apt, as on EC2). One nftables table per
cloud (`sparkfab_<prefix>`) masquerades traffic from the bridge's subnet leaving by any other
interface, and IPv4 forwarding is turned on for the bridge and the uplink only (the global
`ip_forward` switch stays as it is). `remove()` deletes the table; `sweep` does it for a
cloud that died.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


class NatError(RuntimeError):
    pass


def table_name(prefix: str) -> str:
    return f"sparkfab_{prefix}"


def nft(script: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True,
                          timeout=30, check=False)
    if proc.returncode != 0:
        raise NatError(f"nft failed: {proc.stderr.strip()}")


def table_exists(prefix: str) -> bool:
    proc = subprocess.run(["nft", "list", "table", "ip", table_name(prefix)],
                          capture_output=True, text=True, check=False)
    return proc.returncode == 0


def uplink() -> str | None:
    """The interface of the default route (where the registry is reached)."""
    out = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True,
                         text=True, check=False).stdout.split()
    return out[out.index("dev") + 1] if "dev" in out else None


def _enable_forwarding(interface: str) -> None:
    Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding").write_text("1\n")


def add(prefix: str, subnet: str, bridge: str) -> None:
    """Masquerade `subnet` leaving by anything but `bridge`; forwarding on bridge + uplink."""
    table = table_name(prefix)
    nft(f"""\
table ip {table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} oifname != "{bridge}" masquerade
    }}
}}
""")
    _enable_forwarding(bridge)
    out = uplink()
    if out is not None:
        _enable_forwarding(out)


def remove(prefix: str) -> None:
    if table_exists(prefix):
        nft(f"delete table ip {table_name(prefix)}\n")
