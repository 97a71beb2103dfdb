"""PCA of the features with pyspark.ml: a fixed k, or the smallest k reaching a variance.

tests/job checks the explained variances and the scores against NumPy's PCA of the
written features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MIN_K = 2  # the PC1 vs PC2 plot needs two components
# Cumulative variance is a float sum: 0.95 reached as 0.9499999999 still counts.
VARIANCE_TOLERANCE = 1e-9


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


def pca(df: Any, k: int | None, variance: float | None, dim: int) -> PcaResult:
    """Centre the `features` column and project it on its top principal components.

    pyspark.ml's PCAModel.transform does not subtract the mean, so the features are centred
    first (StandardScaler, mean only): the scores are then true PCA scores around 0.

    One fit only. Spark's fit always takes the full SVD of the dim x dim covariance, so
    with a variance target the fit keeps every component (the whole spectrum, to choose
    k) and the projection keeps the first k of them: a second fit at k would repeat the
    covariance pass and the SVD for the same numbers.
    """
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import functions as F

    vec = df.withColumn("_fvec", array_to_vector("features"))
    scaler = StandardScaler(inputCol="_fvec", outputCol="_centred", withMean=True,
                            withStd=False).fit(vec)
    centred = scaler.transform(vec)
    model = PCA(k=dim if k is None else min(k, dim), inputCol="_centred",
                outputCol="_pca").fit(centred)
    spectrum = [float(v) for v in model.explainedVariance]
    if k is None:
        assert variance is not None
        k = choose_k(spectrum, variance)
    k = min(k, len(spectrum))
    scores = model.transform(centred).withColumn("pca", vector_to_array("_pca"))
    if k < len(spectrum):
        scores = scores.withColumn("pca", F.slice("pca", 1, k))
    return PcaResult(k=k, explained=spectrum[:k],
                     scores=scores.drop("_fvec", "_centred", "_pca"))
