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
    first (StandardScaler, mean only): the scores are then true PCA scores around 0. With a
    variance target the first fit keeps every component to read the whole spectrum, and
    the second keeps k; each fit is one pass over the (persisted) features.
    """
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector, vector_to_array

    vec = df.withColumn("_fvec", array_to_vector("features"))
    scaler = StandardScaler(inputCol="_fvec", outputCol="_centred", withMean=True,
                            withStd=False).fit(vec)
    centred = scaler.transform(vec)

    def fit(n: int) -> Any:
        return PCA(k=n, inputCol="_centred", outputCol="_pca").fit(centred)

    if k is None:
        assert variance is not None
        k = choose_k(list(fit(dim).explainedVariance.toArray()), variance)
    model = fit(min(k, dim))
    scores = (
        model.transform(centred)
        .withColumn("pca", vector_to_array("_pca"))
        .drop("_fvec", "_centred", "_pca")
    )
    return PcaResult(k=model.getK(), explained=[float(v) for v in model.explainedVariance],
                     scores=scores)
