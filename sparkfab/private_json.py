"""A JSON file only its owner may read (it holds a secret), replaced atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write(path: Path, doc: Any) -> Path:
    """Write `doc` to `path`: 0600 from its creation, never readable half-written."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o600)  # a leftover tmp keeps the mode it was created with
    os.replace(tmp, path)
    return path
