"""PCA of the features: a fixed k, or the smallest k reaching a variance target.

The distributed part is one pass over the features: every partition sums its rows and
its d x d Gramian with NumPy, and the driver adds those up into the covariance matrix and
takes its eigendecomposition (1280 x 1280: well under a second). The scores are computed
on the executors. This replaces `pyspark.ml.feature.PCA`, which on pyspark 4.0.1 here
returned wrong components and variances from run to run (its explained variance
disagreed with NumPy's on the same features: see tests/job).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MIN_K = 2  # the PC1 vs PC2 plot needs two components
# Cumulative variance is a float sum: 0.95 reached as 0.9499999999 still counts.
VARIANCE_TOLERANCE = 1e-9
ROWS_PER_BLOCK = 1024  # rows turned into one NumPy block at a time (bounded memory)


@dataclass
class PcaResult:
    k: int
    explained: list[float]  # proportion of the total variance, per component (k values)
    scores: Any  # DataFrame: the input columns + "pca" (array<double>, k values)

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


def _partial_sums(rows: Iterator[Any]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    n, total, gram = 0, None, None
    block: list[Any] = []

    def flush() -> None:
        nonlocal n, total, gram
        x = np.asarray(block, dtype=np.float64)
        block.clear()
        n += len(x)
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
        gram = x.T @ x if gram is None else gram + x.T @ x

    for row in rows:
        block.append(row[0])
        if len(block) == ROWS_PER_BLOCK:
            flush()
    if block:
        flush()
    if n:
        yield n, total, gram


def _add(a: tuple[int, np.ndarray, np.ndarray],
         b: tuple[int, np.ndarray, np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def principal_components(n: int, total: np.ndarray, gram: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, eigenvalues descending, eigenvectors as columns) of the sample covariance."""
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)  # tiny negatives are rounding
    vectors = vectors[:, order]
    # A fixed sign per component (largest loading positive): reruns give the same scores.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return mean, values, vectors * np.where(signs == 0, 1.0, signs)


def pca(df: Any, k: int | None, variance: float | None, dim: int) -> PcaResult:
    """Project the `features` column of `df` on its top principal components."""
    from pyspark.sql.functions import pandas_udf

    n, total, gram = df.select("features").rdd.mapPartitions(_partial_sums).treeReduce(_add)
    mean, values, vectors = principal_components(n, total, gram)
    explained = values / values.sum() if values.sum() > 0 else np.zeros_like(values)
    if k is None:
        assert variance is not None
        k = choose_k(explained, variance)
    k = min(k, dim)
    bc = df.sparkSession.sparkContext.broadcast((mean, vectors[:, :k].copy()))

    @pandas_udf("array<double>")  # type: ignore[call-overload]
    def project(features: pd.Series) -> pd.Series:
        centre, components = bc.value
        x = np.stack(features.to_numpy()).astype(np.float64) - centre
        return pd.Series(list(x @ components))

    return PcaResult(k=k, explained=[float(v) for v in explained[:k]],
                     scores=df.withColumn("pca", project("features")))
