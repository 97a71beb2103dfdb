"""The local cloud's machine image: cold build and cached reuse, against their targets.

One run: builds the image into an empty cache directory (cold: mmdebstrap from the Debian
registry), then asks for it again (cached). Prints each figure and its ratio to the target
(cold <= 180 s, cached <= 10 s; <= 1 means met).

    sudo .venv/bin/python bench/image.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sparkfab.localcloud import image  # noqa: E402

COLD_TARGET_S = 180.0
CACHED_TARGET_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory (default: a fresh one, removed after)")
    args = parser.parse_args()
    root = args.cache or Path(tempfile.mkdtemp(prefix="sparkfab-image-bench-",
                                               dir=image.CACHE_ROOT.parent))
    try:
        t0 = time.monotonic()
        path = image.ensure_image(root, say=lambda m: None)
        cold = time.monotonic() - t0
        t0 = time.monotonic()
        assert image.ensure_image(root, say=lambda m: None) == path
        cached = time.monotonic() - t0
    finally:
        if args.cache is None:
            image.remove_tree(root)
    print(f"cold build   {cold:7.1f} s  cold/target   = {cold / COLD_TARGET_S:.2f}")
    print(f"cached       {cached:7.3f} s  cached/target = {cached / CACHED_TARGET_S:.4f}")
    return 0


if __name__ == "__main__":
    shutil.which("mmdebstrap") or sys.exit("error: needs mmdebstrap (apt-get install mmdebstrap)")
    sys.exit(main())
