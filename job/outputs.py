"""The run's outputs, written to a temporary directory and committed at the end.

Every file goes through Hadoop's FileSystem API in the driver's JVM, so a local path,
``s3a://`` or ``hdfs://`` behave the same. A run writes under ``<parent>/_tmp-<run id>``
and, once everything is there, renames it to ``--output``, writes manifest.json, and
``_SUCCESS`` last: a failed run leaves no ``--output`` and a run is complete only with
``_SUCCESS`` (on S3 a rename is a copy, not atomic: readers wait for the marker).
"""

from __future__ import annotations

import functools
import io
import json
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARQUET = "features.parquet"
CSV_MATRIX = "pca_matrix.csv"
ERRORS = "errors.csv"
MANIFEST = "manifest.json"
SCATTER_PNG = "pca_scatter.png"
VARIANCE_PNG = "explained_variance.png"
MARKER = "_SUCCESS"
PCA_BASIS = "pca_basis.parquet"  # mean + components: what --pca-from projects later runs on
MAX_SCATTER_POINTS = 20_000  # a plot of more points says nothing more and costs a collect


class OutputError(Exception):
    """The output location cannot be used; the message says why."""


class OutputTaken(OutputError):
    """--output gained files after the run found it free: they are someone else's, so the
    commit refuses and keeps the finished run where it is (`kept`)."""

    def __init__(self, output: str, kept: str, seen: list[str]) -> None:
        shown = ", ".join(seen[:3]) + (", ..." if len(seen) > 3 else "")
        super().__init__(
            f"--output {output} gained files while the run was working ({shown}); nothing "
            "there was deleted or overwritten, and this run's complete results are kept in "
            f"{kept}: move them, or run again with another --output")
        self.kept = kept


def _not_found(exc: Any) -> bool:
    """Whether a Py4JJavaError is Hadoop's "no such file or folder"."""
    return bool(exc.java_exception.getClass().getName() == "java.io.FileNotFoundException")


@functools.lru_cache(maxsize=4)
def _hadoop_path_class(jvm: Any) -> Any:
    """Hadoop's Path class, looked up once per JVM: py4j asks the JVM about each name of
    `org.apache.hadoop.fs.Path` in turn, five round trips a lookup."""
    return jvm.org.apache.hadoop.fs.Path


class Store:
    """Files under one base URI, on whatever Hadoop filesystem the URI names."""

    def __init__(self, spark: Any, base: str) -> None:
        self._path_class = _hadoop_path_class(spark.sparkContext._jvm)
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.base = base.rstrip("/")
        self.fs = self._path(self.base).getFileSystem(self._conf)
        if self.fs.getScheme() == "file":
            # No ".crc" side files in a local output folder (Spark's writers share this
            # cached FileSystem in local mode, so they skip them too).
            self.fs.setWriteChecksum(False)

    def _path(self, uri: str) -> Any:
        return self._path_class(uri)

    def uri(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts) if parts else self.base

    def qualified(self) -> str:
        return str(self.fs.makeQualified(self._path(self.base)).toString())

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self._path(self.uri(*parts))))

    def is_dir(self) -> bool:
        return bool(self.fs.getFileStatus(self._path(self.base)).isDirectory())

    def is_empty_dir(self) -> bool:
        p = self._path(self.base)
        return bool(self.fs.getFileStatus(p).isDirectory()) and not self.fs.listStatus(p)

    def list_names(self, *parts: str) -> list[str]:
        statuses = self.fs.listStatus(self._path(self.uri(*parts)))
        return [str(s.getPath().getName()) for s in statuses]

    def list_names_if_any(self, *parts: str) -> list[str]:
        """list_names, or [] where the folder does not exist: one request (on S3), not an
        exists() and then the listing."""
        from py4j.protocol import Py4JJavaError

        try:
            return self.list_names(*parts)
        except Py4JJavaError as exc:
            if _not_found(exc):
                return []
            raise

    def list_files(self) -> list[tuple[str, int]]:
        """(path, size) of every file below base, skipping what Spark's readers skip.

        Spark ignores names starting with "_" or "." (at any depth) and also drops
        zero-byte files from its scans; this listing keeps those, so the job can count
        an empty image as a failure instead of losing it.
        """
        found: list[tuple[str, int]] = []
        base = self.fs.makeQualified(self._path(self.base))
        if self.fs.getFileStatus(base).isFile():
            return [(str(base.toString()), int(self.fs.getFileStatus(base).getLen()))]
        prefix = str(base.toString()).rstrip("/") + "/"
        files = self.fs.listFiles(base, True)
        while files.hasNext():
            status = files.next()
            path = str(status.getPath().toString())
            relative = path[len(prefix):] if path.startswith(prefix) else path
            if any(part.startswith(("_", ".")) for part in relative.split("/")):
                continue
            found.append((path, int(status.getLen())))
        return found

    def write_bytes(self, name: str, data: bytes) -> None:
        stream = self.fs.create(self._path(self.uri(name)), True)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def read_bytes(self, name: str) -> bytes:
        """A file's bytes, by way of a copy on the driver's disk: py4j hands back a byte
        array of 8 to 64 KB about 45 ms late (a delayed-ACK stall on its socket; 1 KB and
        200 KB are not), and the copy costs about 10 ms at any size."""
        with self.local_copy(name) as local:
            assert local is not None  # missing: FileNotFoundError
            return local.read_bytes()

    @contextmanager
    def local_copy(self, *parts: str, missing_ok: bool = False) -> Iterator[Path | None]:
        """A copy of a file or folder on the driver's disk, removed on leaving. Where there
        is none: None if `missing_ok`, else FileNotFoundError."""
        from py4j.protocol import Py4JJavaError

        with tempfile.TemporaryDirectory(prefix="sparkfab-copy-") as tmp:
            local = Path(tmp) / "copy"
            try:
                # useRawLocalFileSystem: no ".crc" files beside the copy.
                self.fs.copyToLocalFile(False, self._path(self.uri(*parts)),
                                        self._path(local.as_uri()), True)
            except Py4JJavaError as exc:
                if not _not_found(exc):
                    raise
                if not missing_ok:
                    raise FileNotFoundError(self.uri(*parts)) from None
                local = None
            yield local

    def write_json(self, name: str, obj: object) -> None:
        self.write_bytes(name, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def delete(self, *parts: str) -> None:
        self.fs.delete(self._path(self.uri(*parts)), True)

    def delete_if_empty(self) -> bool:
        """Remove base only while it is an empty folder; False when it is not (any more).

        Hadoop's non-recursive delete refuses a folder that holds anything (local and
        s3a alike), so a file written after any earlier listing still stops it.
        """
        try:
            return bool(self.fs.delete(self._path(self.base), False))
        except Exception as exc:  # py4j's wrapper of PathIsNotEmptyDirectoryException
            if "PathIsNotEmptyDirectory" in str(exc) or "is not empty" in str(exc):
                return False
            raise

    def rename(self, src: str, dst: str) -> None:
        if not self.fs.rename(self._path(src), self._path(dst)):
            raise OutputError(f"could not rename {src} to {dst}")

    def copy_to_local(self, local: str) -> None:
        self.fs.copyToLocalFile(False, self._path(self.base), self._path(local), True)


def temp_location(output: str, run_id: str) -> str:
    """Where a run writes before its commit: beside --output, hidden from Spark readers."""
    parent = posixpath.dirname(output.rstrip("/"))
    if not parent or parent.endswith(":") or parent.endswith("//"):
        raise OutputError(f"--output {output!r} needs a parent folder (e.g. {output}/run1)")
    return posixpath.join(parent, f"_tmp-{run_id}")


def check_output_free(spark: Any, output: str) -> None:
    store = Store(spark, output)
    if store.exists() and not store.is_empty_dir():
        raise OutputError(f"output already exists and is not empty: {output}")


def commit(spark: Any, temp: str, output: str) -> None:
    """Move the finished run into place (the caller writes the manifest, then MARKER).

    --output was free when the run started (check_output_free). Whatever appeared there
    since is not this run's: an empty folder is replaced, anything else is refused
    (OutputTaken) and never deleted; the finished run then stays in `temp`.
    """
    final = Store(spark, output)
    if final.exists() and not (final.is_empty_dir() and final.delete_if_empty()):
        seen = final.list_names() if final.is_dir() else [posixpath.basename(output)]
        raise OutputTaken(output, temp, seen)
    parent = posixpath.dirname(output.rstrip("/"))
    Store(spark, parent).fs.mkdirs(final._path(parent))
    final.rename(temp, output)


def write_single_csv(df: Any, store: Store, name: str, header: list[str]) -> None:
    """One CSV file with a header (not Spark's folder of parts), written via a scratch dir."""
    scratch = f"_{name}.parts"
    df.coalesce(1).write.option("header", True).csv(store.uri(scratch))
    parts = [n for n in store.list_names(scratch) if n.startswith("part-") and n.endswith(".csv")]
    if parts:
        store.rename(store.uri(scratch, parts[0]), store.uri(name))
    else:  # no rows: Spark writes no part file, so write the header alone
        write_csv_header(store, name, header)
    store.delete(scratch)


def write_csv_header(store: Store, name: str, header: list[str]) -> None:
    store.write_bytes(name, (",".join(header) + "\n").encode())


def scatter_png(points: list[tuple[str, float, float]], title: str) -> bytes:
    """PC1 vs PC2, one colour per label, with a legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    labels = sorted({p[0] for p in points})
    cmap = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for i, label in enumerate(labels):
        xs = [p[1] for p in points if p[0] == label]
        ys = [p[2] for p in points if p[0] == label]
        ax.scatter(xs, ys, s=12, alpha=0.75, color=cmap(i % cmap.N), label=f"{label} ({len(xs)})")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="label")
    ax.grid(True, alpha=0.3)
    return _png(plt, fig)


def variance_png(explained: list[float], cumulative: list[float], target: float | None) -> bytes:
    """Per-component and cumulative explained variance."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    xs = list(range(1, len(explained) + 1))
    ax.bar(xs, explained, color="#9ecae1", label="per component")
    ax.plot(xs, cumulative, marker="o", markersize=3, color="#08519c", label="cumulative")
    if target is not None:
        ax.axhline(target, color="#d62728", linestyle="--", label=f"target {target:g}")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Explained variance, k = {len(explained)}: {cumulative[-1]:.3f} in total")
    ax.legend(loc="center right")
    ax.grid(True, alpha=0.3)
    return _png(plt, fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a driver
    import matplotlib.pyplot as plt

    return plt


def _png(plt: Any, fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
