"""The operator's own record of what was staged in a bucket: the artifacts' names, file
names and sha512 digests, pinned on this machine when `fab stage` (or the first install
from the bucket) saw them.

The bucket outlives every cluster, and its staged manifest tells the nodes which digests
to accept; the nodes' role may not touch sparkfab/artifacts/, but anyone else with write
access to the bucket could still swap the manifest and the files together. So every
install compares the staged manifest with the pin and refuses any difference; the
nodes then verify each download against the pinned digests.

The pin lives beside the inventories (inventory/bucket-<bucket>.artifacts.json) and,
unlike a cluster's inventory, is kept by teardown: the next cluster in the bucket is
checked against it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sparkfab import artifacts, private_json
from sparkfab import inventory as inv_mod
from sparkfab.artifacts import Mirror
from sparkfab.errors import UserError

Say = Callable[[str], None]
# Facts that decide what a node installs (the Spark and Python versions), pinned too.
PINNED_FACTS = ("spark", "hadoop", "python")


class PinMismatch(UserError):
    """What the bucket holds now is not what this machine staged or first installed."""


def pin_path(bucket: str, directory: Path | None = None) -> Path:
    return (directory or inv_mod.INVENTORY_DIR) / f"bucket-{bucket}.artifacts.json"


def _pinned_view(mirror: Mirror) -> dict[str, Any]:
    return {
        "files": {f.name: {"filename": f.filename, "sha512": f.sha512, "size": f.size}
                  for f in mirror.files},
        "facts": {k: mirror.facts[k] for k in PINNED_FACTS if k in mirror.facts},
    }


def pin(bucket: str, mirror: Mirror, directory: Path | None = None) -> Path:
    """Record `mirror` (what was just staged into `bucket`) as the trusted content."""
    path = pin_path(bucket, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"bucket": bucket, "prefix": artifacts.STAGE_PREFIX,
           "pinned_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           **_pinned_view(mirror)}
    return private_json.write(path, doc)


def load(bucket: str, directory: Path | None = None) -> dict[str, Any] | None:
    path = pin_path(bucket, directory)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not JSON",
                        hint="delete it; the next `fab stage` or install pins again") from None
    return dict(doc)


def differences(pinned: dict[str, Any], staged: Mirror) -> list[str]:
    """Each way `staged` differs from `pinned`, one short line each."""
    now = _pinned_view(staged)
    out = []
    before_files, now_files = pinned.get("files", {}), now["files"]
    for name in sorted(set(before_files) | set(now_files)):
        was, is_ = before_files.get(name), now_files.get(name)
        if was is None:
            out.append(f"{name}: not pinned, now staged as {is_['filename']}")
        elif is_ is None:
            out.append(f"{name}: pinned, no longer staged")
        elif was != is_:
            out.append(f"{name}: pinned {was['filename']} sha512 {was['sha512'][:16]}..., "
                       f"staged {is_['filename']} sha512 {is_['sha512'][:16]}...")
    before_facts, now_facts = pinned.get("facts", {}), now["facts"]
    for key in PINNED_FACTS:
        if before_facts.get(key) != now_facts.get(key):
            out.append(f"{key} version: pinned {before_facts.get(key)}, "
                       f"staged {now_facts.get(key)}")
    return out


def check(bucket: str, staged: Mirror, say: Say, directory: Path | None = None) -> None:
    """Refuse (PinMismatch) a staged manifest that differs from this machine's pin; pin it
    when this machine has none yet (the bucket was staged elsewhere), saying so."""
    pinned = load(bucket, directory)
    path = pin_path(bucket, directory)
    if pinned is None:
        pin(bucket, staged, directory)
        say(f"artifacts staged in s3://{bucket}/{artifacts.STAGE_PREFIX}: pinned "
            f"{len(staged.files)} digests in {path} (first use from this machine); a later "
            "change there is refused")
        return
    diff = differences(pinned, staged)
    if diff:
        raise PinMismatch(
            f"the artifacts staged in s3://{bucket}/{artifacts.STAGE_PREFIX} are not the "
            f"ones pinned in {path}: " + "; ".join(diff),
            hint="someone with write access to the bucket changed them, or they were "
            "re-staged from another machine: re-stage from a mirror you trust (`fab stage` "
            "re-pins), or, if you know the new ones are right, delete that file",
        )
