"""The feature store: every image's features kept across runs, so a run featurizes only what is new.

A Parquet dataset under one root (``--features``: a local folder or an ``s3a://`` prefix),
read and written through Spark and Hadoop's FileSystem API only, so local and S3 behave
the same:

    <root>/fingerprint=<engine>-<digest>/       one model setup (see fingerprint())
        _fingerprint.json                       what the digest was made of, for people
        batch=<batch id>/part-*.parquet         the images one run featurized
        _keys/<batch id>.parquet                its keys (path, size, mtime_ms, ok)
        _commits/<batch id>                     written once its batch is complete
        _tmp-batch=<batch id>/                  a batch being written (hidden from readers)

A row: path, size, mtime_ms (the key: the image as it was when read), features
(array<float>, null for an image that failed) and error (null for a good one). Bad images
are kept too, so they are not decoded again until they change.

Commit protocol: a run writes its batch into ``_tmp-batch=<id>`` (Spark and pyarrow skip
names starting with ``_``), renames it to ``batch=<id>`` and then writes
``_commits/<id>``. The job reads only batches named in ``_commits/``: a batch is complete
or invisible, even on S3 where a rename is a copy. Before the commit, the batch's keys
are kept in one small file (gathered while the batch is written): a later run learns what
the store holds from those files, without a Spark job (a batch committed without one is
read instead).
Batch ids are unique per run, so two runs appending at once never touch each other's
files. Two batches may hold the same key (two runs featurized the same new image at once,
or ``--refeaturize``): the row of the greatest batch id wins; batch ids sort by creation
time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import re
import secrets
import tempfile
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import featurize
import outputs

FORMAT_VERSION = 1  # of the rows and layout below; part of every fingerprint
COMMITS = "_commits"
KEYS = "_keys"
FINGERPRINT_FILE = "_fingerprint.json"
BATCH_PREFIX = "batch="
TMP_PREFIX = "_tmp-batch="
SCHEMA = "path string, size long, mtime_ms long, features array<float>, error string"
# The packages whose versions can change the features' bits, per engine.
ENGINE_PACKAGES = {
    "tensorflow": ("tensorflow", "pillow", "numpy"),
    "onnx": ("onnxruntime", "tf2onnx", "tensorflow", "pillow", "numpy"),
}
DEFAULT_LOCAL = ".cache/features"
DEFAULT_REMOTE = "features"  # under the bucket (authority) of an s3a:// --output

Key = tuple[str, int, int]  # path, size, mtime_ms


@dataclass(frozen=True)
class InputFile:
    path: str  # as Spark's binaryFile `path` column spells it (Hadoop Path.toString)
    size: int
    mtime_ms: int

    @property
    def key(self) -> Key:
        return (self.path, self.size, self.mtime_ms)


@dataclass(frozen=True)
class Stored:
    batch: str
    ok: bool


def default_location(output: str) -> str:
    """`features/` at the root of an s3a:// (or other remote) output's bucket, else
    `.cache/features` below the driver's working directory."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://([^/]+)", output)
    if match and match.group(1) != "file":
        return f"{match.group(1)}://{match.group(2)}/{DEFAULT_REMOTE}"
    return os.path.abspath(DEFAULT_LOCAL)


# ---- the input, from Spark's file index ---------------------------------------------

# Hadoop's FileStatus.toString(): "<Class>{path=P; isDirectory=false; length=N; ...".
_STATUS = re.compile(r"^\w+\{path=(.*?); isDirectory=false; length=(\d+); replication=\d+; "
                     r"blocksize=\d+; modification_time=(\d+); ", re.DOTALL)


def list_index(files: Any) -> list[InputFile]:
    """Every file a binaryFile DataFrame's index holds, with size and modification time.

    Spark listed them already (load() builds the index): read them from there, not in a
    Spark job. One py4j call carries them all as text (about 0.3 s for 2,000 files here);
    should that text ever not parse, one call per field instead (about 0.35 ms a file).
    """
    statuses = files._jdf.queryExecution().analyzed().relation().location().allFiles()
    count = int(statuses.size())
    found: list[InputFile] = []
    for entry in str(statuses.mkString("\0")).split("\0") if count else []:
        match = _STATUS.match(entry)
        if not match:
            break
        found.append(InputFile(match.group(1), int(match.group(2)), int(match.group(3))))
    if len(found) == count:
        return found
    found = []
    it = statuses.iterator()
    while it.hasNext():
        status = it.next()
        found.append(InputFile(str(status.getPath().toString()), int(status.getLen()),
                               int(status.getModificationTime())))
    return found


def select_files(files: Any, wanted: list[InputFile]) -> Any:
    """The rows of a binaryFile DataFrame for `wanted` only, reading no other file.

    A filter on `_metadata` prunes files in Spark's planning (Spark >= 3.5 filters the
    file index on metadata columns): the modification times, plain numbers (the path and
    name there are URL-escaped), which new images rarely share with old ones (S3 keeps
    whole seconds: a file uploaded in the same second as a new one is read too). The
    exact filter on `path` follows. Sizes would prune a little more, for about 50 ms more
    of analysis on a fresh driver (the selection takes about 0.1 s with 200 new images).
    One SQL expression, not Column.isin: isin costs a py4j call per value (about 1 s
    for 200 new images here), the parser one for all.
    """
    from pyspark.sql import functions as F

    mtimes = ", ".join(str(m) for m in sorted({f.mtime_ms for f in wanted}))
    paths = ", ".join(_sql_string(p) for p in sorted({f.path for f in wanted}))
    # One where(): each one costs an analysis of the plan (40 ms here, cold).
    return files.where(F.expr(f"unix_millis(_metadata.file_modification_time) IN ({mtimes})"
                              f" AND path IN ({paths})"))


def _sql_string(text: str) -> str:
    """`text` as a Spark SQL string expression that says it whatever the session's settings.

    A raw literal (r'...': no escapes, so neither a backslash nor
    spark.sql.parser.escapedStringLiterals changes it) where the text holds no quote and
    no "${" (the parser substitutes variables before it lexes); else its UTF-8 bytes in
    hex, cast, which the analyzer and optimizer then work through value by value (about
    50 ms more for 200 paths on a fresh driver, hence only where needed).
    """
    if "'" not in text and "${" not in text:
        return f"r'{text}'"
    return f"CAST(X'{text.encode().hex()}' AS STRING)"


# ---- the fingerprint -------------------------------------------------------------------


# pip's names for a package, where they differ from its import name.
_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu")}


def _version(package: str) -> str | None:
    for name in _DISTRIBUTIONS.get(package, (package,)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def fingerprint(weights: list[Any], input_size: int, engine: str) -> tuple[str, dict[str, Any]]:
    """(name, description) of the model setup that makes the features.

    Everything that changes the features' bits: the weights (their bytes, dtypes and
    shapes), the input size, the preprocessing, the engine and the versions of the
    packages doing the arithmetic. Batch size and threads do not (featurize pads a batch
    of one; TF gave the same bits at 1 and 2 threads and any batch of 2 or more).
    """
    import numpy as np

    digest = hashlib.sha256()
    for w in weights:
        array = np.ascontiguousarray(w)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    packages = ENGINE_PACKAGES.get(engine, (engine, "pillow", "numpy"))
    description = {
        "store_format": FORMAT_VERSION,
        "engine": engine,
        "weights_sha256": digest.hexdigest(),
        "input_size": input_size,
        "preprocessing": featurize.PREPROCESSING,
        "feature_dim": featurize.FEATURE_DIM,
        "versions": {p: _version(p) for p in packages},
    }
    canonical = json.dumps(description, sort_keys=True).encode()
    return f"{engine}-{hashlib.sha256(canonical).hexdigest()[:16]}", description


def new_batch_id() -> str:
    """UTC time to the microsecond + random: sorts by creation, unique across runs."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{secrets.token_hex(4)}"


_BATCH_IN_PATH = r"/batch=([^/]+)/"


class FeatureStore:
    """The store's rows for one fingerprint."""

    def __init__(self, spark: Any, root: str, name: str, description: dict[str, Any]) -> None:
        self.spark = spark
        self.root = root.rstrip("/")
        self.name = name
        self.description = description
        self.files = outputs.Store(spark, posixpath.join(self.root, f"fingerprint={name}"))

    @property
    def location(self) -> str:
        return self.files.base

    def committed(self) -> list[str]:
        """Ids of the complete batches, oldest first."""
        return sorted(self.files.list_names_if_any(COMMITS))

    def _read(self, batches: list[str]) -> Any:
        from pyspark.sql import functions as F

        paths = [self.files.uri(BATCH_PREFIX + b) for b in batches]
        return (self.spark.read.schema(SCHEMA).parquet(*paths)
                .withColumn("batch", F.regexp_extract("_metadata.file_path", _BATCH_IN_PATH, 1)))

    def keys(self, batches: list[str] | None = None) -> dict[Key, Stored]:
        """Every key in the committed batches (or in `batches`), with the batch that wins:
        from the batches' key files, and from the batches themselves where one has none."""
        batches = self.committed() if batches is None else batches
        rows: list[tuple[str, int, int, str, bool]] = []
        unlisted: list[str] = []
        if batches:
            # The key files in one copy to the driver's disk: one call, not one per batch
            # (each one a request on S3, and a file read through py4j about 50 ms here).
            # A batch's key file is written before its commit: every batch listed above
            # that has one is in the copy.
            with self.files.local_copy(KEYS, missing_ok=True) as folder:
                for batch in batches:
                    key_file = folder / _key_file(batch) if folder else None
                    if key_file is not None and key_file.is_file():
                        rows += [(*k, batch, ok) for *k, ok in _keys_from_parquet(
                            key_file.read_bytes())]
                    else:
                        unlisted.append(batch)
        rows += self._read_keys(unlisted)
        found: dict[Key, Stored] = {}
        for path, size, mtime_ms, batch, ok in rows:
            key = (path, size, mtime_ms)
            if key not in found or batch > found[key].batch:
                found[key] = Stored(batch, ok)
        return found

    def _read_keys(self, batches: list[str]) -> list[tuple[str, int, int, str, bool]]:
        """The keys of `batches`, read from their Parquet files (a Spark job)."""
        if not batches:
            return []
        return [(r["path"], int(r["size"]), int(r["mtime_ms"]), r["batch"], bool(r["ok"]))
                for r in self._read(batches).select(*_key_columns(), "batch").collect()]

    def append(self, rows: Any, batch: str, info: dict[str, Any]) -> dict[Key, Stored]:
        """Write `rows` (a DataFrame of SCHEMA's columns, in its order) as batch `batch`,
        then commit it; returns the batch's keys."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        tmp = self.files.uri(TMP_PREFIX + batch)
        final = self.files.uri(BATCH_PREFIX + batch)
        if not self.files.exists(FINGERPRINT_FILE):
            self.files.write_json(FINGERPRINT_FILE, {"fingerprint": self.name, **self.description})
        # The batch's keys, gathered by the write itself (Spark's observed metrics: from
        # the tasks that succeeded, once each): reading them back cost a Spark job.
        written = Observation(f"feature-store-keys-{batch}")
        try:
            (rows.observe(written, F.to_json(F.collect_list(F.struct(*_key_columns())))
                          .alias("keys"))
             # No dictionaries: features and paths are nearly all distinct, so Parquet
             # would fill one per column, find it no smaller and encode the values again
             # plainly, for a small batch as the file closes: on the task's critical path.
             .write.option("parquet.enable.dictionary", "false").parquet(tmp))
            self.files.rename(tmp, final)
        except BaseException:
            self.files.delete(TMP_PREFIX + batch)
            raise
        keys = [(k["path"], int(k["size"]), int(k["mtime_ms"]), bool(k["ok"]))
                for k in json.loads(_observed(self.spark, written).get("keys") or "[]")]
        self.files.write_bytes(posixpath.join(KEYS, _key_file(batch)), _keys_to_parquet(keys))
        # Last: from here on the batch exists for every reader.
        self.files.write_json(posixpath.join(COMMITS, batch), {"batch": batch, **info})
        return {(p, s, m): Stored(batch, ok) for p, s, m, ok in keys}

    def part_files(self, batch: str) -> int:
        """How many Parquet files a committed batch has: one per task that wrote rows."""
        return sum(1 for name in self.files.list_names(BATCH_PREFIX + batch)
                   if name.startswith("part-"))

    def read(self, chosen: dict[str, str]) -> Any:
        """DataFrame (path, size, mtime_ms, features, error) of the rows `chosen` names:
        path -> the batch to take it from."""
        from pyspark.sql import functions as F

        wanted = self.spark.createDataFrame(sorted((b, p) for p, b in chosen.items()),
                                            "batch string, path string")
        return (self._read(sorted(set(chosen.values())))
                .join(F.broadcast(wanted), ["batch", "path"])
                .select("path", "size", "mtime_ms", "features", "error"))

    def size(self, keys: dict[Key, Stored]) -> dict[str, Any]:
        """How big this fingerprint's part of the store is, after this run."""
        summary = self.files.fs.getContentSummary(self.files._path(self.files.base))
        return {"images": len(keys), "batches": len(self.committed()),
                "bytes": int(summary.getLength())}


def _observed(spark: Any, observation: Any) -> dict[str, str]:
    """An Observation's string-valued metrics (to_json's, say), by way of a file on the
    driver's disk.

    py4j hands back a string of 8 to 64 KB about 45 ms late (a delayed-ACK stall on its
    socket, as outputs.Store.read_bytes says of byte arrays); a new batch of 200 images
    has about 30 KB of keys. The JVM writes the metrics into a properties XML file
    instead (its escaping is the JDK's, its parsing the standard library's): a few small
    py4j calls. What that cannot carry (a value that is no string; U+FFFE, which XML 1.0
    has no place for) comes through py4j after all.
    """
    from xml.etree import ElementTree

    from py4j.protocol import Py4JJavaError

    jvm = spark.sparkContext._jvm
    metrics = observation._jo.getAsJava()  # waits for the action's metrics, as .get does
    with tempfile.TemporaryDirectory(prefix="sparkfab-observed-") as tmp:
        path = os.path.join(tmp, "metrics.xml")
        try:
            properties = jvm.java.util.Properties()
            properties.putAll(metrics)
            stream = jvm.java.io.FileOutputStream(path)
            try:
                properties.storeToXML(stream, None, "UTF-8")
            finally:
                stream.close()
            entries = ElementTree.parse(path).getroot().iter("entry")
            return {str(e.get("key")): e.text or "" for e in entries}
        except (Py4JJavaError, ElementTree.ParseError):
            return {str(k): str(v) for k, v in observation.get.items()}


def _key_columns() -> list[Any]:
    """What a key file holds of a row: its key, and whether the image was good."""
    from pyspark.sql import functions as F

    return ["path", "size", "mtime_ms", F.col("error").isNull().alias("ok")]


def _key_file(batch: str) -> str:
    """The name of a batch's key file under KEYS/."""
    return f"{batch}.parquet"


def _keys_to_parquet(keys: list[tuple[str, int, int, bool]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(zip(*keys, strict=True)) if keys else [[], [], [], []]
    table = pa.table(columns, schema=pa.schema([
        ("path", pa.string()), ("size", pa.int64()), ("mtime_ms", pa.int64()),
        ("ok", pa.bool_())]))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _keys_from_parquet(data: bytes) -> list[tuple[str, int, int, bool]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(data))
    return list(zip(table.column("path").to_pylist(), table.column("size").to_pylist(),
                    table.column("mtime_ms").to_pylist(), table.column("ok").to_pylist(),
                    strict=True))
