"""PCA of the features in PySpark: a fixed k, or the smallest k reaching a variance.

tests/job checks the explained variances and the scores against NumPy's PCA of the
written features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd  # module level: pandas_udf resolves the type hints in these globals

MIN_K = 2  # the PC1 vs PC2 plot needs two components
# Cumulative variance is a float sum: 0.95 reached as 0.9499999999 still counts.
VARIANCE_TOLERANCE = 1e-9


@dataclass
class PcaResult:
    k: int
    explained: list[float]  # proportion of the total variance, per component (k values)
    scores: Any  # DataFrame: the input columns + "pca" (array<double>, k values)
    # The basis the scores are on: scores = (features - mean) @ components.T
    mean: list[float] = field(default_factory=list)  # dim values
    components: list[list[float]] = field(default_factory=list)  # k rows of dim values

    @property
    def cumulative(self) -> list[float]:
        total, out = 0.0, []
        for v in self.explained:
            total += v
            out.append(min(total, 1.0))
        return out


def choose_k(explained: Iterable[float], target: float) -> int:
    """The smallest k whose cumulative explained variance reaches `target` (at least MIN_K)."""
    total, n = 0.0, 0
    for n, v in enumerate(explained, start=1):
        total += v
        if total >= target - VARIANCE_TOLERANCE:
            return max(n, MIN_K)
    return max(n, MIN_K)


def pca(df: Any, k: int | None, variance: float | None, dim: int) -> PcaResult:
    """Centre the `features` column and project it on its top principal components.

    One pass of Spark over the features: each partition sums its rows, and their outer
    products, in NumPy (float64), and the driver adds the partitions' sums up; the covariance
    (dim x dim) is then split into its eigenvectors on the driver, as Spark ML's PCA does
    with its own covariance pass. Spark ML took three passes here (StandardScaler's
    mean, PCA's covariance, the projection in the JVM: 7-10 s of a 2,000-image run, where
    this stage takes 3 s, reading the features from the store included). The scores are
    (features - mean) @ components.T, true PCA scores around 0.
    Each component's sign is fixed (its largest loading positive): the same data gives the
    same coordinates in every run.
    """
    n, total, gram = _moments(df, dim)
    if n < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {n}")
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    vectors = vectors[:, order]
    ratios = values / values.sum()
    k = choose_k(ratios, variance) if k is None else min(k, dim)
    components = vectors[:, :k].T
    largest = np.abs(components).argmax(axis=1)
    components = components * np.sign(components[np.arange(k), largest])[:, None]
    return project(df, mean.tolist(), components.tolist(), [float(r) for r in ratios[:k]])


def _moments(df: Any, dim: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, sum of rows, sum of outer products) of the `features` column, in one Spark
    pass, one partition per core (each partition's result is dim x dim doubles)."""
    import pyarrow as pa

    schema = pa.schema([("n", pa.int64()), ("s", pa.binary()), ("g", pa.binary())])

    def partial(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        n, total, gram = 0, np.zeros(dim), np.zeros((dim, dim))
        for batch in batches:
            if batch.num_rows:
                x = (batch.column(0).flatten().to_numpy(zero_copy_only=False)
                     .astype(np.float64).reshape(-1, dim))
                n += len(x)
                total += x.sum(axis=0)
                gram += x.T @ x
        yield pa.RecordBatch.from_pydict(
            {"n": [n], "s": [total.tobytes()], "g": [gram.tobytes()]}, schema=schema)

    cores = df.sparkSession.sparkContext.defaultParallelism
    rows = (df.select("features").coalesce(cores)
            .mapInArrow(partial, "n long, s binary, g binary").collect())
    n = sum(int(r["n"]) for r in rows)
    total = sum((np.frombuffer(r["s"]) for r in rows), np.zeros(dim))
    gram = sum((np.frombuffer(r["g"]).reshape(dim, dim) for r in rows), np.zeros((dim, dim)))
    return n, total, gram


# ---- a basis kept with a run, to project later runs on ---------------------------------

BASIS_FINGERPRINT_KEY = b"sparkfab.fingerprint"


class BasisError(Exception):
    """A saved basis cannot be used for this run; the message says why."""


def basis_parquet(result: PcaResult, fingerprint: str) -> bytes:
    """The basis as a small Parquet file: one row for the mean, one per component.

    Columns: name ("mean", "pc_1".."pc_k"), explained_variance (null for the mean),
    vector (dim doubles). The features' fingerprint is in the file's metadata: a basis
    only makes sense for features of the same model setup.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["mean", *[f"pc_{i + 1}" for i in range(result.k)]]
    table = pa.table({
        "name": names,
        "explained_variance": [None, *result.explained],
        "vector": [result.mean, *result.components],
    }, schema=pa.schema([("name", pa.string()), ("explained_variance", pa.float64()),
                         ("vector", pa.list_(pa.float64()))],
                        metadata={BASIS_FINGERPRINT_KEY: fingerprint.encode()}))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_basis(data: bytes, fingerprint: str, source: str) -> tuple[list[float], list[list[float]],
                                                                       list[float]]:
    """(mean, components, explained) from basis_parquet()'s bytes; BasisError when the
    basis belongs to other features."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(data))
    theirs = (table.schema.metadata or {}).get(BASIS_FINGERPRINT_KEY, b"").decode()
    if theirs != fingerprint:
        raise BasisError(f"the PCA basis in {source} was fitted on features of model setup "
                         f"{theirs or '(unknown)'}; this run's features are {fingerprint} "
                         "(other weights, input size or engine): its coordinates would mean "
                         "nothing here")
    rows = table.to_pylist()
    mean = [r["vector"] for r in rows if r["name"] == "mean"]
    pcs = [r for r in rows if r["name"] != "mean"]
    if len(mean) != 1 or len(pcs) < MIN_K:
        raise BasisError(f"{source} is not a PCA basis (a mean and >= {MIN_K} components)")
    return mean[0], [r["vector"] for r in pcs], [float(r["explained_variance"]) for r in pcs]


def project(df: Any, mean: list[float], components: list[list[float]],
            explained: list[float]) -> PcaResult:
    """Scores of `df`'s features on a given basis: (features - mean) @ components.T."""
    from pyspark.sql.functions import pandas_udf

    centre = np.asarray(mean, dtype=np.float64)
    basis = np.asarray(components, dtype=np.float64).T  # dim x k

    @pandas_udf("array<double>")  # type: ignore[call-overload]
    def scores(features: pd.Series) -> pd.Series:
        if features.empty:
            return pd.Series([], dtype=object)
        x = np.stack(features.to_numpy()).astype(np.float64)
        return pd.Series(list((x - centre) @ basis))

    return PcaResult(k=len(explained), explained=list(explained),
                     scores=df.withColumn("pca", scores("features")),
                     mean=list(mean), components=[list(c) for c in components])
