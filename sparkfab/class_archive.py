"""The local driver JVM's class archive (Java's AppCDS): Spark's classes mapped from one file.

A local run's JVM loads and verifies some 10,000 classes from Spark's jars, the first query's
planning included: seconds of a short run, on the cores the Python workers need. A dynamic
class data archive holds them ready to map. On 2 cores (bench/incremental.py, a run of 200
new images among 2,200) the SparkSession started in 2.4 s instead of 4.1 and the whole run
took 14 s instead of 17.5.

The first local run without an archive writes one as its JVM exits
(-XX:ArchiveClassesAtExit, to a name of its own); `finish` renames it into place once the
run has succeeded and a JVM started with -Xshare:on mapped it, so a run killed half way
leaves no half archive, and two first runs at once each write their own. The JVM does not
fall back from an archive cut short, it dies (SIGBUS): beside the archive its size is
kept, written last, and an archive of another size, or without one, is written anew.
The archive's name holds a digest of the Java runtime and Spark's jars: another Java or
another pyspark makes another archive, and the JVM itself ignores one that does not match
its class path. Its log lines about classes it could not archive are switched off: they
are not the user's business.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "SPARKFAB_JVM_CACHE"
SWITCH_ENV = "SPARKFAB_CLASS_ARCHIVE"  # "off": neither use nor write one
SUFFIX = ".jsa"
QUIET = "-Xlog:cds*=off"
# Spark splits extraJavaOptions at white space and quotes: a path must hold neither.
_PLAIN_PATH = re.compile(r"^[^\s'\"\\]+$")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparkfab" / "jvm")


def spark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def archive_path(java_home: Path, jars: Path | None = None) -> Path:
    """Where the archive for this Java and these Spark jars lives."""
    jars = spark_jars() if jars is None else jars
    digest = hashlib.sha256(str(java_home.resolve()).encode())
    release = java_home / "release"
    if release.is_file():
        digest.update(release.read_bytes())
    for jar in sorted(jars.glob("*.jar")):
        stat = jar.stat()
        digest.update(f"{jar.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return cache_dir() / f"spark-driver-{digest.hexdigest()[:16]}{SUFFIX}"


@dataclass(frozen=True)
class Plan:
    """The JVM options for one run, and the archive it writes (None: it uses one, or none)."""

    java_options: str
    writing: Path | None = None
    final: Path | None = None


def plan(java_home: Path | None) -> Plan:
    """Use the archive if there is one, else have this run write it."""
    if java_home is None or os.environ.get(SWITCH_ENV, "").lower() == "off":
        return Plan("")
    final = archive_path(java_home)
    if not _PLAIN_PATH.match(str(final)):
        return Plan("")
    if _is_whole(final):
        return Plan(f"{QUIET} -XX:SharedArchiveFile={final}")
    _remove(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: runs work as before, only slower
        return Plan("")
    writing = final.with_name(f"{final.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    return Plan(f"{QUIET} -XX:ArchiveClassesAtExit={writing}", writing, final)


def finish(plan: Plan, succeeded: bool, maps: Callable[[Path], bool]) -> bool:
    """After the run: keep the archive it wrote if the run succeeded and `maps(archive)`
    says a JVM can use it. True if one was kept."""
    if plan.writing is None or plan.final is None:
        return False
    try:
        if not (succeeded and plan.writing.is_file() and plan.writing.stat().st_size > 0
                and maps(plan.writing)):
            return False
        size = plan.writing.stat().st_size
        os.replace(plan.writing, plan.final)
        _size_file(plan.final).write_text(f"{size}\n")
        _remove_others(plan.final)
        return True
    finally:
        plan.writing.unlink(missing_ok=True)


def _size_file(archive: Path) -> Path:
    return archive.with_name(archive.name + ".size")


def _is_whole(archive: Path) -> bool:
    try:
        return int(_size_file(archive).read_text()) == archive.stat().st_size
    except (OSError, ValueError):
        return False


def _remove(archive: Path) -> None:
    archive.unlink(missing_ok=True)
    _size_file(archive).unlink(missing_ok=True)


def _remove_others(kept: Path) -> None:
    """Archives of an earlier Java or pyspark are 100-200 MB each: one is kept."""
    for other in kept.parent.glob(f"spark-driver-*{SUFFIX}"):
        if other != kept:
            _remove(other)
