"""The operator's own `ssh` to the nodes (interactive shells, port forwards), with the
cluster's known_hosts; commands run by sparkfab itself go through sparkfab.remote.

Host keys are verified against inventory/<cluster>.known_hosts, written at provision time
from keys the nodes proved (console output on AWS, the harness in the local cloud); an
unknown or changed key is refused, never accepted on first use.
"""

from __future__ import annotations

from pathlib import Path

from sparkfab import inventory
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory, Node

CONNECT_TIMEOUT_S = 15


def known_hosts(inv: Inventory) -> Path:
    path = inventory.known_hosts_path(inv.cluster)
    if not path.exists():
        raise UserError(
            f"no known host keys for cluster {inv.cluster!r} ({path} is missing)",
            "run `fab provision` again: it records the nodes' host keys",
        )
    return path


def private_key(inv: Inventory) -> Path:
    key = Path(inv.private_key_path).expanduser() if inv.private_key_path else None
    if key is None or not key.exists():
        raise UserError(
            f"the SSH private key for cluster {inv.cluster!r} was not found "
            f"({inv.private_key_path or 'not recorded in the inventory'})",
            "it is the public_key_path setting without .pub; the inventory records it",
        )
    return key


def find_node(inv: Inventory, which: str | int | None) -> Node:
    """A node by index (0 = master, 1.. = workers in order), by name, or the master."""
    if which is None or which == "":
        return inv.master
    ordered = [inv.master, *inv.workers]
    text = str(which)
    if text.isdigit():
        index = int(text)
        if index < len(ordered):
            return ordered[index]
    for node in inv.nodes:
        if text in (node.name, node.instance_id, node.private_ip, node.public_ip):
            return node
    names = ", ".join(f"{i}={n.name or n.instance_id}" for i, n in enumerate(ordered))
    raise UserError(f"no node {which!r} in cluster {inv.cluster!r}", f"nodes: {names}")


def ssh_options(inv: Inventory, *, port_forwards: bool = False) -> list[str]:
    """Options shared by every system `ssh` sparkfab runs.

    `-F none`: no ssh_config is read, so a user's `ForwardAgent yes` (or a ProxyCommand,
    LocalCommand, forwards) never applies to a node; whoever controls a node could
    otherwise use the operator's agent. The forwarding options are repeated explicitly
    for the same reason; `port_forwards` keeps the command line's own -L forwards."""
    return [
        "-F", "none",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "PermitLocalCommand=no",
        *([] if port_forwards else ["-o", "ClearAllForwardings=yes"]),
        "-i", str(private_key(inv)),
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={known_hosts(inv)}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        "-o", "ServerAliveInterval=30",
        "-l", inv.ssh_user,
    ]


def shell_argv(inv: Inventory, node: Node, command: str | None = None) -> list[str]:
    """`ssh` into node: an interactive shell, or one command line for the node's shell.

    The command goes to ssh as ONE argument, exactly as the user wrote it: ssh joins its
    arguments with spaces and the node's shell parses the result, so splitting it here
    first would drop its quotes (`grep -c "a b"` would become `grep -c a b`).
    """
    argv = ["ssh", *ssh_options(inv)]
    if command:  # no terminal to answer prompts: fail instead of asking
        argv += ["-o", "BatchMode=yes", inv.address(node), "--", command]
    else:
        argv += ["-t", inv.address(node)]
    return argv

