"""Every download a cluster node makes: its origin, its checksum, and its staged copy in S3.

Origins (the defaults, for a machine with internet):
  spark           Apache's release archive, the exact version of the installed pyspark;
                  verified against the .sha512 Apache publishes beside it
  hadoop-aws      Maven Central, the Hadoop version of pyspark's own client jars
  aws-sdk-bundle  Maven Central, the version that Hadoop release's hadoop-project POM pins
  miniforge       the conda installer (python_env=conda), pinned with its sha256
  wheelhouse      one tarball of the job's wheels, built here (sparkfab.wheelhouse)

A "mirror" is a directory holding these files and a manifest.json with their sha512: built
from the origins for AWS, or from local parts for the local cloud (sparkfab.localcloud.mirror).
`stage()` copies a mirror into the cluster's bucket once; nodes then get presigned GET URLs
(`presigned_downloads`) and verify each file's sha512, so they need no AWS CLI and no keys.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import sys
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparkfab.errors import UserError

SPARK = "spark"
HADOOP_AWS = "hadoop-aws"
SDK_BUNDLE = "aws-sdk-bundle"
MINIFORGE = "miniforge"
WHEELHOUSE = "wheelhouse"

APACHE_SPARK_ARCHIVE = "https://archive.apache.org/dist/spark"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
# The Spark build whose jars pyspark ships: Hadoop 3 client, Scala 2.13 (Spark 4's only one).
SPARK_PACKAGE = "bin-hadoop3"
# hadoop-project's POM property naming the AWS SDK v2 bundle that Hadoop release was built with.
SDK_VERSION_PROPERTY = "aws-java-sdk-v2.version"
MINIFORGE_VERSION = "25.3.1-0"
MINIFORGE_SHA256 = "376b160ed8130820db0ab0f3826ac1fc85923647f75c1b8231166e3d559ab768"
MINIFORGE_URL = "https://github.com/conda-forge/miniforge/releases/download"

MANIFEST = "manifest.json"
STAGE_PREFIX = "sparkfab/artifacts/"
STAGED_ALGO = "sha512"  # what every mirror and staged copy is verified with on the nodes
PRESIGN_EXPIRES_S = 12 * 3600  # long enough for a slow install; re-issued per install
_CHUNK = 1 << 20


class ChecksumMismatch(UserError):
    """A file's digest is not the published one: a corrupt or tampered download."""


class BadManifest(UserError):
    """A manifest (local, staged in the bucket, or a mirror's) with a value that could
    not have come from sparkfab: refused before any of it reaches a node's shell or path."""


# What a manifest may hold: its names and versions become file names, paths and words of
# the nodes' install scripts, so each is checked against a strict pattern first.
_ARTIFACT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
_VERSION = re.compile(r"^[0-9]{1,4}(?:\.[0-9]{1,4}){0,3}(?:[.+-]?[A-Za-z0-9]{1,20}){0,3}$")
_PYTHON_VERSION = re.compile(r"^3\.[0-9]{1,2}$")
_SHA512 = re.compile(r"^[0-9a-f]{128}$")
_VERSION_FACTS = {"spark": _VERSION, "hadoop": _VERSION, "python": _PYTHON_VERSION}


# ---- versions read off the installed pyspark -------------------------------------------


def spark_version() -> str:
    """The Spark version: the installed pyspark's, so driver and cluster always agree."""
    return importlib.metadata.version("pyspark")


def pyspark_home() -> Path:
    import pyspark  # here, not at import time: importing pyspark is slow

    return Path(pyspark.__file__).resolve().parent


def hadoop_version(jars_dir: Path | None = None) -> str:
    """Hadoop's version as pyspark ships it: read off hadoop-client-api-<v>.jar in its jars/."""
    jars = jars_dir or pyspark_home() / "jars"
    found = sorted(jars.glob("hadoop-client-api-*.jar"))
    if len(found) != 1:
        raise UserError(
            f"expected one hadoop-client-api-*.jar in {jars}, found {len(found)}",
            hint="reinstall pyspark (`pip install --force-reinstall pyspark`)",
        )
    return found[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def sdk_bundle_version(pom_text: str, hadoop: str = "") -> str:
    """The AWS SDK v2 bundle version a hadoop-project POM pins."""
    tag = re.escape(SDK_VERSION_PROPERTY)
    m = re.search(rf"<{tag}>\s*([^<\s]+)\s*</{tag}>", pom_text)
    if not m:
        raise UserError(
            f"hadoop-project {hadoop or '?'} POM has no <{SDK_VERSION_PROPERTY}>",
            hint="Hadoop before 3.4 used the v1 SDK; use a pyspark built on Hadoop 3.4+",
        )
    return m.group(1)


def maven_url(group: str, artifact: str, version: str, ext: str = "jar") -> str:
    path = f"{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.{ext}"
    return f"{MAVEN_CENTRAL}/{path}"


def hadoop_project_pom(hadoop: str) -> str:
    """hadoop-project's POM: from the local Maven repository if there, else Maven Central."""
    local = (Path.home() / ".m2/repository/org/apache/hadoop/hadoop-project" / hadoop /
             f"hadoop-project-{hadoop}.pom")
    if local.exists():
        return local.read_text()
    url = maven_url("org.apache.hadoop", "hadoop-project", hadoop, "pom")
    return _http_get(url).decode()


# ---- where each artifact comes from ------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """An artifact's origin. `digest` is pinned here, or read from `digest_url` on fetch."""

    name: str
    filename: str
    url: str
    algo: str
    digest: str = ""
    digest_url: str = ""


def spark_filename(version: str) -> str:
    return f"spark-{version}-{SPARK_PACKAGE}.tgz"


def spark_source(version: str) -> Source:
    url = f"{APACHE_SPARK_ARCHIVE}/spark-{version}/{spark_filename(version)}"
    return Source(SPARK, spark_filename(version), url, "sha512", digest_url=url + ".sha512")


def maven_source(name: str, group: str, artifact: str, version: str) -> Source:
    url = maven_url(group, artifact, version)
    # Maven Central publishes a .sha1 for every file (sha512 only for some); the staged
    # copy is re-hashed with sha512 once this check has passed.
    return Source(name, f"{artifact}-{version}.jar", url, "sha1", digest_url=url + ".sha1")


def hadoop_aws_source(hadoop: str) -> Source:
    return maven_source(HADOOP_AWS, "org.apache.hadoop", "hadoop-aws", hadoop)


def sdk_bundle_source(sdk: str) -> Source:
    return maven_source(SDK_BUNDLE, "software.amazon.awssdk", "bundle", sdk)


def miniforge_source() -> Source:
    filename = f"Miniforge3-{MINIFORGE_VERSION}-Linux-x86_64.sh"
    url = f"{MINIFORGE_URL}/{MINIFORGE_VERSION}/{filename}"
    return Source(MINIFORGE, filename, url, "sha256", MINIFORGE_SHA256)


def origin_sources(python_env: str = "venv", *, pom_text: str | None = None) -> list[Source]:
    """The downloadable artifacts for this pyspark (the wheelhouse is built, not downloaded)."""
    hadoop = hadoop_version()
    sdk = sdk_bundle_version(pom_text or hadoop_project_pom(hadoop), hadoop)
    found = [spark_source(spark_version()), hadoop_aws_source(hadoop), sdk_bundle_source(sdk)]
    if python_env == "conda":
        found.append(miniforge_source())
    return found


# ---- checksums ---------------------------------------------------------------------------


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, algo: str, expected: str, label: str = "") -> None:
    """Raise ChecksumMismatch naming the file, both digests, and what to do."""
    got = file_digest(path, algo)
    if got.lower() != expected.lower():
        raise ChecksumMismatch(
            f"{label or path.name}: {algo} mismatch: expected {expected[:16]}..., "
            f"got {got[:16]}... (a corrupt or tampered download)",
            hint=f"delete {path} and fetch it again; if it persists, the source is wrong",
        )


def parse_digest_file(text: str, filename: str, algo: str) -> str:
    """The hex digest for `filename` in a published checksum file.

    Accepts `sha512sum` output (`HEX  name` / `HEX *name`), a bare `HEX` (Maven), and the
    `gpg --print-md` layout older Apache releases use (`name: HEX IN GROUPS`, wrapped).
    """
    size = hashlib.new(algo).digest_size * 2
    gpg = re.search(rf"{re.escape(filename)}\s*:\s*([0-9A-Fa-f\s]+)", text)
    if gpg:
        hexdigits = re.sub(r"\s+", "", gpg.group(1))
        if len(hexdigits) == size:
            return hexdigits.lower()
    for line in text.splitlines():
        parts = line.split()
        if not parts or len(parts[0]) != size or not re.fullmatch(r"[0-9A-Fa-f]+", parts[0]):
            continue
        if len(parts) == 1 or parts[-1].lstrip("*").split("/")[-1] == filename:
            return parts[0].lower()
    raise UserError(
        f"no {algo} digest for {filename} in its published checksum file",
        hint="the release's checksum file has an unexpected layout; check it by hand",
    )


# ---- a mirror: files + manifest.json -----------------------------------------------------


@dataclass(frozen=True)
class MirrorFile:
    name: str  # SPARK, HADOOP_AWS, ...
    filename: str
    sha512: str
    size: int
    origin: str = ""  # where it came from, for the record


@dataclass
class Mirror:
    """A directory of artifacts and the manifest that lists them."""

    root: Path
    files: list[MirrorFile] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # versions, wheelhouse pins

    def path(self, f: MirrorFile) -> Path:
        return self.root / f.filename

    def get(self, name: str) -> MirrorFile:
        for f in self.files:
            if f.name == name:
                return f
        raise UserError(f"the mirror at {self.root} has no {name}",
                        hint="rebuild it (python -m sparkfab.localcloud.mirror)")

    def add(self, name: str, path: Path, origin: str = "") -> MirrorFile:
        """Record a file already in the mirror directory (its sha512 written beside it)."""
        digest = file_digest(path, STAGED_ALGO)
        (path.parent / f"{path.name}.{STAGED_ALGO}").write_text(f"{digest}  {path.name}\n")
        entry = MirrorFile(name, path.name, digest, path.stat().st_size, origin)
        self.files = [f for f in self.files if f.name != name] + [entry]
        return entry

    def save(self) -> Path:
        doc = {"facts": self.facts, "files": [asdict(f) for f in self.files]}
        out = self.root / MANIFEST
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        tmp.replace(out)
        return out

    @classmethod
    def load(cls, root: Path) -> Mirror:
        manifest = root / MANIFEST
        if not manifest.exists():
            raise UserError(f"{root} is not an artifact mirror (no {MANIFEST})",
                            hint="build one first, e.g. `python -m sparkfab.localcloud.mirror`")
        try:
            doc = json.loads(manifest.read_text())
        except ValueError:
            raise BadManifest(f"{manifest} is not JSON",
                              hint="rebuild the mirror") from None
        return cls.from_doc(root, doc, str(manifest))

    @classmethod
    def from_doc(cls, root: Path, doc: Any, where: str) -> Mirror:
        """A mirror from a manifest document, every value checked (BadManifest names it)."""
        files, facts = parse_manifest(doc, where)
        return cls(root, files, facts)

    def verify(self) -> None:
        """Every listed file is present with its recorded size and sha512."""
        for f in self.files:
            p = self.path(f)
            if not p.exists():
                raise UserError(f"mirror file {p} is missing", hint="rebuild the mirror")
            if p.stat().st_size != f.size:
                raise ChecksumMismatch(f"{p.name}: size {p.stat().st_size} != {f.size}",
                                       hint="rebuild the mirror")
            verify_file(p, STAGED_ALGO, f.sha512)


def parse_manifest(doc: Any, where: str) -> tuple[list[MirrorFile], dict[str, Any]]:
    """The files and facts of a manifest.json, refused (BadManifest) unless every name,
    file name, digest and version matches its strict pattern."""

    def bad(what: str) -> BadManifest:
        return BadManifest(f"{where}: {what}; refusing the whole manifest",
                           hint="a manifest written by sparkfab never holds this: rebuild "
                           "the mirror or re-stage it (`fab stage`) from one you trust")

    if not isinstance(doc, dict) or not isinstance(doc.get("files", []), list) \
            or not isinstance(doc.get("facts", {}), dict):
        raise bad("not a manifest (files: [...], facts: {...})")
    files: list[MirrorFile] = []
    fields = set(MirrorFile.__dataclass_fields__)
    for entry in doc.get("files", []):
        if not isinstance(entry, dict) or not {"name", "filename", "sha512", "size"} <= \
                set(entry) <= fields:
            raise bad(f"file entry {str(entry)[:80]!r} is not name/filename/sha512/size")
        name, filename, digest, size = (entry["name"], entry["filename"], entry["sha512"],
                                        entry["size"])
        if not isinstance(name, str) or not _ARTIFACT_NAME.match(name):
            raise bad(f"artifact name {name!r} is not a plain name")
        if not isinstance(filename, str) or not _FILENAME.match(filename):
            raise bad(f"{name}: file name {filename!r} is not a plain file name")
        if not isinstance(digest, str) or not _SHA512.match(digest):
            raise bad(f"{name}: {digest!r} is not a sha512 hex digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"{name}: size {size!r} is not a byte count")
        if not isinstance(entry.get("origin", ""), str):
            raise bad(f"{name}: origin is not text")
        if name in {f.name for f in files} or filename in {f.filename for f in files}:
            raise bad(f"{name} ({filename}) is listed twice")
        files.append(MirrorFile(name, filename, digest, size, entry.get("origin", "")))
    facts = dict(doc.get("facts", {}))
    for key, pattern in _VERSION_FACTS.items():
        value = facts.get(key)
        if value is not None and (not isinstance(value, str) or not pattern.match(value)):
            raise bad(f"{key} version {value!r} is not a version number")
    return files, facts


Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (https origins only)
        return bytes(resp.read())


def fetch_origin(source: Source, dest_dir: Path, progress: Progress = _say) -> Path:
    """Download `source` into dest_dir (kept if already there and valid) and verify it."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / source.filename
    digest = source.digest or parse_digest_file(
        _http_get(source.digest_url).decode(errors="replace"), source.filename, source.algo)
    if dest.exists():
        try:
            verify_file(dest, source.algo, digest)
            return dest
        except ChecksumMismatch:
            dest.unlink()
    progress(f"downloading {source.url}")
    part = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(source.url, timeout=60) as resp, part.open("wb") as out:  # noqa: S310
        shutil.copyfileobj(resp, out, _CHUNK)
    try:
        verify_file(part, source.algo, digest, label=f"{source.filename} from {source.url}")
    except ChecksumMismatch:
        part.unlink()
        raise
    part.replace(dest)
    return dest


# ---- staging into the cluster's bucket ---------------------------------------------------


@dataclass(frozen=True)
class Download:
    """What a node needs for one artifact: a URL it may GET, the file name, the checksum."""

    name: str
    filename: str
    url: str
    algo: str
    digest: str


@dataclass
class StageReport:
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def staged_key(f: MirrorFile, prefix: str = STAGE_PREFIX) -> str:
    # The digest in the key: a changed artifact never overwrites one a node is fetching.
    return f"{prefix}{f.sha512[:16]}/{f.filename}"


def stage(
    s3: Any,
    bucket: str,
    mirror: Mirror,
    *,
    prefix: str = STAGE_PREFIX,
    names: Iterable[str] | None = None,
    progress: Progress = _say,
) -> StageReport:
    """Upload each mirror file to the bucket unless an object with its sha512 is already there."""
    wanted = set(names) if names is not None else None
    report = StageReport()
    for f in mirror.files:
        if wanted is not None and f.name not in wanted:
            continue
        key = staged_key(f, prefix)
        if _staged_digest(s3, bucket, key) == f.sha512:
            report.skipped.append(f.name)
            progress(f"  {f.name}: already staged ({f.filename})")
            continue
        progress(f"  {f.name}: uploading {f.filename} ({f.size / 1e6:.1f} MB)")
        s3.upload_file(
            str(mirror.path(f)), bucket, key,
            ExtraArgs={"Metadata": {STAGED_ALGO: f.sha512}},
        )
        report.uploaded.append(f.name)
    return report


def _staged_digest(s3: Any, bucket: str, key: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return str(head.get("Metadata", {}).get(STAGED_ALGO, "")) or None


def presigned_downloads(
    s3: Any,
    bucket: str,
    mirror: Mirror,
    *,
    prefix: str = STAGE_PREFIX,
    expires_s: int = PRESIGN_EXPIRES_S,
) -> dict[str, Download]:
    """Presigned GET URLs for the staged artifacts, by name."""
    return {
        f.name: Download(
            f.name, f.filename,
            s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": staged_key(f, prefix)},
                ExpiresIn=expires_s,
            ),
            STAGED_ALGO, f.sha512,
        )
        for f in mirror.files
    }


def mirror_downloads(base_url: str, mirror: Mirror) -> dict[str, Download]:
    """Downloads straight from a mirror served over HTTP (artifact_source = a URL)."""
    base = base_url.rstrip("/")
    return {
        f.name: Download(f.name, f.filename, f"{base}/{f.filename}", STAGED_ALGO, f.sha512)
        for f in mirror.files
    }
