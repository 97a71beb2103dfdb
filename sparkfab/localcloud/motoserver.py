"""moto_server for the local cloud, serving each instance's real console output.

moto answers `GetConsoleOutput` with a fixed sample text. Here every node's console (what
its systemd and cloud-init print, host keys included) is written by the machine provider to
`<console dir>/<instance id>.log`; this wrapper makes moto's answer that file's tail, so
provisioning reads host keys from `GetConsoleOutput` exactly as on AWS. Its S3
authorization, once a booted cloud turns IAM authorization on (principals.py), follows AWS
where moto's does not (awsauth.py).

    python -m sparkfab.localcloud.motoserver --console-dir DIR -H IP -p PORT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sparkfab.localcloud import awsauth

# EC2 returns the most recent 64 KiB of console output.
CONSOLE_TAIL_BYTES = 64 * 1024


def console_text(console_dir: Path, instance_id: str) -> str:
    """The instance's console so far (its last 64 KiB); empty before it has printed anything,
    as EC2's answer is for a just-launched instance."""
    path = console_dir / f"{instance_id}.log"
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - CONSOLE_TAIL_BYTES))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def patch_moto(console_dir: Path) -> None:
    """Replace moto's sample console text with the node's own."""
    from moto.core.utils import utcnow
    from moto.ec2.responses.general import General
    from moto.ec2.utils import Base64EncodedString

    def get_console_output(self: Any) -> Any:
        from moto.core.responses import ActionResult

        instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
        return ActionResult({
            "InstanceId": instance.id,
            "Timestamp": utcnow(),
            "Output": Base64EncodedString.from_raw_string(
                console_text(console_dir, instance.id)),
        })

    General.get_console_output = get_console_output  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--console-dir", type=Path, required=True)
    args, rest = parser.parse_known_args(argv)
    patch_moto(args.console_dir.resolve())
    awsauth.patch()
    from moto.server import main as moto_main

    moto_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
