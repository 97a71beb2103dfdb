"""The job's Python packages as ONE tarball of wheels, so a node fetches one URL, offline.

Only what runs on the cluster goes in (the job's pyspark, TensorFlow, ONNX Runtime, tf2onnx,
Pillow, pyarrow, pandas, numpy, matplotlib; the notebook's JupyterLab and boto3; their
dependencies); fabric, paramiko and the other operator-side packages stay here. Versions are
sparkfab's own pins, and every transitive dependency is constrained to the version installed
in this environment, so nodes run what the tests ran.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from sparkfab.errors import UserError

# What the job needs on every node; the pins themselves live in pyproject.toml.
# TensorFlow and tf2onnx serve the driver (on the master), onnxruntime the executors.
JOB_PACKAGES = ("pyspark", "tensorflow-cpu", "onnxruntime", "tf2onnx", "onnx", "pillow",
                "pyarrow", "pandas", "numpy", "matplotlib")
# `fab notebook` (sparkfab/notebook.py): the server and kernel on the master, nbclient to
# run a notebook headless, boto3 for the server's saves to S3 (pyarrow's S3 writes are
# multipart uploads, which moto, the local cloud's S3, answers in a way Arrow rejects).
# Installed on every node: each install step is one script for all nodes, and one
# environment everywhere is what Spark's Python needs anyway. They add 62 MB of wheels to
# the 870 MB cp311 wheelhouse (932 MB, measured).
NOTEBOOK_PACKAGES = ("jupyterlab", "ipykernel", "nbclient", "boto3")
# manylinux_2_34: glibc 2.34+, i.e. Amazon Linux 2023, Ubuntu 22.04+, Debian 12+.
DEFAULT_PLATFORM = "manylinux_2_34_x86_64"
_MANYLINUX = re.compile(r"^manylinux_2_(\d+)_(\w+)$")
# The installer nodes use for the wheelhouse: package installs are most of a node's install
# time, and uv, one static binary in a wheel, installs the job's packages into a fresh venv
# in parallel: 41 s with bytecode on 2 cores where pip takes 77 s (pip --no-compile: 35 s,
# but then every Python worker spends 7-12 s more importing TensorFlow).
INSTALLER_PIN = "uv==0.9.5"
TOP_DIR = "wheelhouse"  # the tarball's single top-level directory
REQUIREMENTS = "requirements.txt"  # inside TOP_DIR: what to `pip install --no-index`


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    """Exact pins of JOB_PACKAGES: sparkfab's declared pin, else the installed version."""
    declared: dict[str, str] = {}
    try:
        for req in importlib.metadata.requires("sparkfab") or []:
            m = re.match(r"^([A-Za-z0-9_.-]+)==([^;\s]+)", req)
            if m:
                declared[_canon(m.group(1))] = m.group(2)
    except importlib.metadata.PackageNotFoundError:
        pass
    pins = []
    for pkg in (*JOB_PACKAGES, *NOTEBOOK_PACKAGES):
        version = declared.get(_canon(pkg))
        if version is None:
            try:
                version = importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:
                raise UserError(f"{pkg} is not installed here, so its version is unknown",
                                hint="run `make setup` (pip install -e '.[dev]')") from None
        pins.append(f"{pkg}=={version}")
    return pins


def _constraints() -> list[str]:
    """Every installed distribution, pinned: transitive versions follow this environment."""
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and _canon(name) not in ("sparkfab",):
            seen[_canon(name)] = f"{name}=={dist.version}"
    return sorted(seen.values())


def tarball_name(python_version: str, platform: str = DEFAULT_PLATFORM) -> str:
    return f"wheelhouse-cp{python_version.replace('.', '')}-{platform}.tar"


def build(
    out_dir: Path,
    python_version: str = f"{sys.version_info.major}.{sys.version_info.minor}",
    platform: str = DEFAULT_PLATFORM,
    *,
    pip: list[str] | None = None,
) -> Path:
    """Download (and, for pyspark, build) the wheels; pack them into out_dir/<tarball>."""
    pip = pip or [sys.executable, "-m", "pip"]
    work = out_dir / f".{TOP_DIR}-build"
    shutil.rmtree(work, ignore_errors=True)
    wheels = work / TOP_DIR
    wheels.mkdir(parents=True)
    pins = requirements()
    (wheels / REQUIREMENTS).write_text("".join(p + "\n" for p in pins))
    constraints = work / "constraints.txt"
    constraints.write_text("".join(c + "\n" for c in _constraints()))
    quiet = ["--quiet", "--disable-pip-version-check"]
    spark_pin = next(p for p in pins if p.startswith("pyspark=="))
    # pyspark is published only as an sdist: build its (pure-Python) wheel; pip's wheel
    # cache keeps it, so this is slow only the first time on a machine.
    _pip(pip + ["wheel", *quiet, "--no-deps", "-w", str(wheels), spark_pin])
    _pip(pip + [
        "download", *quiet, "--only-binary=:all:", "--implementation", "cp",
        "--python-version", python_version, *_platform_flags(platform),
        "--find-links", str(wheels), "-d", str(wheels), "-c", str(constraints),
        "-r", str(wheels / REQUIREMENTS),
    ])
    _pip(pip + [
        "download", *quiet, "--only-binary=:all:", "--no-deps", "--implementation", "cp",
        "--python-version", python_version, *_platform_flags(platform),
        "-d", str(wheels), INSTALLER_PIN,
    ])
    out = out_dir / tarball_name(python_version, platform)
    part = out.with_suffix(".tar.part")
    # Uncompressed: wheels are zip files already; sorted, owner-free entries keep it stable.
    with tarfile.open(part, "w") as tar:
        tar.add(wheels, arcname=TOP_DIR, filter=_plain, recursive=False)
        for f in sorted(wheels.iterdir()):
            tar.add(f, arcname=f"{TOP_DIR}/{f.name}", filter=_plain)
    part.replace(out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _platform_flags(platform: str) -> list[str]:
    """--platform for `platform` and every older glibc it runs wheels of: pip does not expand
    a manylinux_2_X tag itself (tensorflow-cpu ships manylinux_2_27 wheels, for instance)."""
    m = _MANYLINUX.match(platform)
    if not m:
        return ["--platform", platform]
    newest, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, 16, -1)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return [flag for tag in tags for flag in ("--platform", tag)]


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _pip(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise UserError(f"building the wheelhouse failed: {tail}",
                        hint="check PyPI is reachable and the pins exist for this platform")
