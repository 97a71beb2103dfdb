"""SSH key pairs made for a local cloud (an operator's key on AWS is the user's own)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Keypair:
    private_key: Path
    public_key: str  # the authorized_keys line


def make_keypair(path: Path, comment: str = "sparkfab-local-cloud") -> Keypair:
    """A new ed25519 key at `path` (and `path`.pub), with no passphrase; reused if present."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
        )
    return Keypair(path, Path(f"{path}.pub").read_text().strip())
