"""The nodes' SSH host keys, recorded in inventory/<cluster>.known_hosts before any SSH.

sparkfab never trusts a key on first use (sparkfab.remote rejects unknown keys), so the
keys must come from a channel other than the SSH connection itself:
each instance's console output (`GetConsoleOutput`): cloud-init prints the host's public
keys between `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----` at
first boot. The local cloud's machines do the same, and its moto serves their consoles.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparkfab import inventory
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
# Console output appears a minute or two after boot on AWS, sometimes more.
CONSOLE_TIMEOUT_S = 600.0
CONSOLE_POLL_S = 10.0
# The local cloud's nodes print their keys seconds after launch.
LOCAL_CONSOLE_POLL_S = 1.0
_KEY = re.compile(r"((?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) [A-Za-z0-9+/=]+)")

Say = Callable[[str], None]


def keys_in_console(output: str) -> list[str]:
    """'type base64' of every host key in the console's key block (empty: not printed yet)."""
    if BEGIN not in output or END not in output.split(BEGIN, 1)[1]:
        return []
    block = output.split(BEGIN, 1)[1].split(END, 1)[0]
    return _KEY.findall(block)


def _console_output(ec2: Any, instance_id: str) -> str:
    # botocore decodes the API's base64 Output already.
    return str(ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or "")


def from_console(ec2: Any, inv: Inventory, say: Say,
                 timeout_s: float = CONSOLE_TIMEOUT_S, poll_s: float | None = None) -> str:
    """known_hosts lines for every node, from the instances' console output (AWS)."""
    pending = {n.instance_id: n for n in inv.nodes}
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    said = False
    while pending:
        for iid, node in list(pending.items()):
            keys = keys_in_console(_console_output(ec2, iid))
            if keys:
                lines += [f"{inv.address(node)} {key}" for key in keys]
                del pending[iid]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise UserError(
                f"no SSH host keys in the console output of {', '.join(sorted(pending))} "
                f"after {timeout_s:.0f}s",
                hint="sparkfab trusts only host keys the instance printed at boot; check the "
                "instance's system log in the EC2 console, then run `fab provision` again")
        if not said:
            say("waiting for the instances to print their SSH host keys (console output)")
            said = True
        time.sleep(poll_s or CONSOLE_POLL_S)
    return "".join(line + "\n" for line in lines)


def record(inv: Inventory, settings: Any, ec2: Any, say: Say,
           directory: Path | None = None) -> Path:
    """Write inventory/<cluster>.known_hosts with every node's keys; its path."""
    local = getattr(settings, "local_cloud", None)
    text = from_console(ec2, inv, say,
                        poll_s=LOCAL_CONSOLE_POLL_S if local else None)
    path = inventory.known_hosts_path(inv.cluster, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    say(f"host keys of {len(inv.nodes)} nodes recorded: {path}")
    return path
