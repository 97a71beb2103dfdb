"""Build the local cloud's artifact mirror from what this machine can reach (PyPI, Maven Central).

    python -m sparkfab.localcloud.mirror [--out .cache/mirror]

  spark           spark-<v>-bin-hadoop3.tgz ASSEMBLED from the installed pyspark (jars/, bin/,
                  sbin/, python/lib, licenses/, conf templates, RELEASE): Apache's tarball
                  cannot be downloaded here. The wheel has no start-master.sh; the service
                  units start `bin/spark-class org.apache.spark.deploy.master.Master` instead.
  hadoop-aws,     with `mvn dependency:copy -Dtransitive=false` (cached in ~/.m2), checked
  aws-sdk-bundle  against the .sha1 Maven Central publishes
  wheelhouse      sparkfab.wheelhouse.build (pip)

Each file gets a .sha512 beside it and a line in manifest.json. A second run reuses what
is there when the versions still match.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from sparkfab import artifacts, wheelhouse
from sparkfab.artifacts import Mirror
from sparkfab.errors import UserError

DEFAULT_OUT = Path(".cache/mirror")
M2 = Path.home() / ".m2" / "repository"
# Assembled tarballs hold mostly jars (already compressed): fast gzip, not a small one.
_GZIP_LEVEL = 1
_CONF_TEMPLATES = {
    "spark-env.sh.template": "# Environment for Spark daemons; sparkfab renders spark-env.sh.\n",
    "spark-defaults.conf.template": "# Default Spark properties; sparkfab renders "
    "spark-defaults.conf.\n",
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- spark, from the pyspark package -----------------------------------------------------


def assemble_spark(out_dir: Path, pyspark_dir: Path | None = None) -> Path:
    """spark-<v>-bin-hadoop3.tgz with the layout of Apache's, from the installed pyspark."""
    src = pyspark_dir or artifacts.pyspark_home()
    version = artifacts.spark_version()
    hadoop = artifacts.hadoop_version(src / "jars")
    top = artifacts.spark_filename(version).removesuffix(".tgz")
    out = out_dir / f"{top}.tgz"
    part = out.with_suffix(".tgz.part")
    release = (f"Spark {version} built for Hadoop {hadoop}\n"
               f"Assembled by sparkfab from the pyspark {version} package "
               "(jars, bin, sbin, python/lib); not an Apache release artifact.\n")
    with open(part, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0
    ) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        _add_dir(tar, top)
        for sub in ("bin", "sbin", "jars", "licenses"):
            if (src / sub).is_dir():
                _add_tree(tar, src / sub, f"{top}/{sub}")
        _add_dir(tar, f"{top}/python")
        _add_tree(tar, src / "python" / "lib", f"{top}/python/lib")
        _add_dir(tar, f"{top}/conf")
        for name, text in _CONF_TEMPLATES.items():
            _add_bytes(tar, f"{top}/conf/{name}", text.encode())
        _add_bytes(tar, f"{top}/RELEASE", release.encode())
    part.replace(out)
    return out


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _add_dir(tar: tarfile.TarFile, arcname: str) -> None:
    info = tarfile.TarInfo(arcname)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(_plain(info))


def _add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    info.mode = mode
    tar.addfile(_plain(info), io.BytesIO(data))


def _add_tree(tar: tarfile.TarFile, root: Path, arcname: str) -> None:
    _add_dir(tar, arcname)
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        name = f"{arcname}/{path.relative_to(root).as_posix()}"
        if path.is_dir():
            _add_dir(tar, name)
        else:
            info = tar.gettarinfo(str(path), name)
            # Scripts stay executable (bin/spark-class), data files stay plain.
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with path.open("rb") as fh:
                tar.addfile(_plain(info), fh)


# ---- jars, from Maven Central through mvn ------------------------------------------------


def maven_fetch(group: str, artifact: str, version: str, ext: str = "jar") -> Path:
    """The artifact in ~/.m2 (fetched by `mvn` once), verified against its published .sha1."""
    local = M2 / group.replace(".", "/") / artifact / version / f"{artifact}-{version}.{ext}"
    if not local.exists():
        _say(f"mvn: fetching {group}:{artifact}:{version}:{ext}")
        proc = subprocess.run(
            ["mvn", "-q", "-B", "dependency:get", "-Dtransitive=false",
             f"-Dartifact={group}:{artifact}:{version}:{ext}"],
            capture_output=True, text=True,
        )
        if proc.returncode != 0 or not local.exists():
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
            raise UserError(f"mvn could not fetch {group}:{artifact}:{version}: {tail}",
                            hint="check that Maven Central is reachable (and `mvn` installed)")
    published = Path(f"{local}.sha1")
    if published.exists():
        digest = artifacts.parse_digest_file(published.read_text(), local.name, "sha1")
        artifacts.verify_file(local, "sha1", digest)
    return local


def _link_or_copy(src: Path, dest: Path) -> Path:
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)  # the SDK bundle is 558 MB: share its blocks with ~/.m2
    except OSError:
        shutil.copyfile(src, dest)
    return dest


# ---- the whole mirror --------------------------------------------------------------------


def wanted_facts(python_version: str) -> dict[str, object]:
    hadoop = artifacts.hadoop_version()
    pom = maven_fetch("org.apache.hadoop", "hadoop-project", hadoop, "pom").read_text()
    return {
        "spark": artifacts.spark_version(),
        "hadoop": hadoop,
        "sdk": artifacts.sdk_bundle_version(pom, hadoop),
        "python": python_version,
        "platform": wheelhouse.DEFAULT_PLATFORM,
        "requirements": wheelhouse.requirements(),
        "installer": wheelhouse.INSTALLER_PIN,
    }


def build_mirror(out: Path = DEFAULT_OUT, python_version: str | None = None) -> Mirror:
    """The mirror at `out`, built or brought up to date; returns it (manifest saved)."""
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    out.mkdir(parents=True, exist_ok=True)
    facts = wanted_facts(python_version)
    try:
        mirror = Mirror.load(out)
    except UserError:
        mirror = Mirror(out)
    same = {k for k in facts if mirror.facts.get(k) == facts[k]}

    def fresh(name: str, *keys: str) -> bool:
        if any(k not in same for k in keys):
            return False
        try:
            f = mirror.get(name)
        except UserError:
            return False
        p = mirror.path(f)
        return p.exists() and p.stat().st_size == f.size

    spark_v, hadoop, sdk = facts["spark"], facts["hadoop"], facts["sdk"]
    # Each artifact is keyed on the facts it depends on (Hadoop's version follows pyspark's).
    if not fresh(artifacts.SPARK, "spark"):
        _timed(f"assembling Spark {spark_v} from pyspark", lambda: mirror.add(
            artifacts.SPARK, assemble_spark(out), f"pyspark {spark_v} package"))
        _checkpoint(mirror, facts, "spark")
    if not fresh(artifacts.HADOOP_AWS, "hadoop"):
        jar = maven_fetch("org.apache.hadoop", "hadoop-aws", str(hadoop))
        mirror.add(artifacts.HADOOP_AWS, _link_or_copy(jar, out / jar.name),
                   artifacts.hadoop_aws_source(str(hadoop)).url)
        _checkpoint(mirror, facts, "hadoop")
    if not fresh(artifacts.SDK_BUNDLE, "sdk"):
        jar = _timed(f"AWS SDK bundle {sdk} (558 MB, once per machine)",
                     lambda: maven_fetch("software.amazon.awssdk", "bundle", str(sdk)))
        mirror.add(artifacts.SDK_BUNDLE, _link_or_copy(jar, out / jar.name),
                   artifacts.sdk_bundle_source(str(sdk)).url)
        _checkpoint(mirror, facts, "sdk")
    if not fresh(artifacts.WHEELHOUSE, "python", "platform", "requirements", "installer"):
        tar = _timed(f"wheelhouse for Python {python_version}",
                     lambda: wheelhouse.build(out, python_version))
        mirror.add(artifacts.WHEELHOUSE, tar, "PyPI via pip download")
    mirror.facts = facts
    _remove_strays(mirror)
    mirror.save()
    return mirror


def _checkpoint(mirror: Mirror, facts: dict[str, object], *keys: str) -> None:
    """Save what is done so far, so an interrupted build does not redo it (slow parts)."""
    mirror.facts.update({k: facts[k] for k in keys})
    mirror.save()


def _remove_strays(mirror: Mirror) -> None:
    """Old versions' files: not in the manifest any more, so not staged, only taking disk."""
    keep = {f.filename for f in mirror.files}
    keep |= {f"{name}.{artifacts.STAGED_ALGO}" for name in keep} | {artifacts.MANIFEST}
    for p in mirror.root.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink()


def _timed(what: str, fn):  # type: ignore[no-untyped-def]
    _say(f"mirror: {what} ...")
    t0 = time.monotonic()
    result = fn()
    _say(f"mirror: {what}: {time.monotonic() - t0:.1f}s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="mirror directory")
    parser.add_argument("--python", default=None,
                        help="nodes' Python version for the wheelhouse (default: this one)")
    args = parser.parse_args(argv)
    try:
        mirror = build_mirror(args.out, args.python)
    except UserError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    for f in mirror.files:
        print(f"{f.name:15} {f.size / 1e6:9.1f} MB  {f.filename}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
