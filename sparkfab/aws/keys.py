"""The cluster's EC2 key pair: the operator's public key imported; the private key stays home."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from sparkfab.aws import tags as T
from sparkfab.aws.session import error_code
from sparkfab.errors import UserError

# The key types EC2 can import.
KEY_TYPES = ("ssh-ed25519", "ssh-rsa")

Say = Callable[[str], None]


def key_pair_name(cluster: str) -> str:
    return f"sparkfab-{cluster}"


def read_public_key(path: Path) -> str:
    """The key line (type, base64, comment) of an OpenSSH public key file."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise UserError(f"SSH public key {path} does not exist",
                        hint=f"create one with `ssh-keygen -t ed25519 -f {path.with_suffix('')}`,"
                        " or set public_key_path") from None
    except OSError as exc:
        raise UserError(f"cannot read SSH public key {path}: {exc.strerror}",
                        hint="check public_key_path") from None
    if "PRIVATE KEY" in text:
        raise UserError(f"{path} is a private key; sparkfab needs the public one",
                        hint="point public_key_path at the .pub file next to it")
    fields = text.split()
    if len(fields) < 2 or fields[0] not in KEY_TYPES:
        raise UserError(f"{path} is not an OpenSSH ed25519 or RSA public key",
                        hint="EC2 imports only these; `ssh-keygen -t ed25519` makes one")
    return text


def _same_key(a: str, b: str) -> bool:
    return a.split()[:2] == b.split()[:2]


def ensure_key_pair(ec2: Any, cluster: str, public_key: str,
                    extra_tags: dict[str, str], say: Say) -> tuple[str, bool]:
    """The key pair's name (imported when missing); True if created."""
    name = key_pair_name(cluster)
    try:
        found = ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
    except ClientError as exc:
        if error_code(exc) != "InvalidKeyPair.NotFound":
            raise
        found = []
    if found:
        pair = found[0]
        if not T.is_ours(pair.get("Tags"), cluster):
            raise UserError(f"a key pair named {name} exists and was not created by sparkfab "
                            f"for cluster {cluster}",
                            hint="choose another cluster name, or delete that key pair")
        if pair.get("PublicKey") and not _same_key(pair["PublicKey"], public_key):
            raise UserError(f"key pair {name} holds a different public key than "
                            "public_key_path",
                            hint="point public_key_path at the key this cluster was made "
                            "with, or `fab teardown` and provision again")
        say(f"key pair {name}: exists")
        return name, False
    ec2.import_key_pair(
        KeyName=name,
        PublicKeyMaterial=public_key.encode(),
        TagSpecifications=[T.spec("key-pair", T.cluster_tags(cluster, extra_tags))],
    )
    say(f"key pair {name}: imported")
    return name, True


def delete_key_pair(ec2: Any, name: str) -> None:
    ec2.delete_key_pair(KeyName=name)  # deleting a missing key pair succeeds
