"""PCA of the features with pyspark.ml: a fixed k, or the smallest k reaching a variance."""

from __future__ import annotations

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


def choose_k(explained: list[float], target: float) -> int:
    """The smallest k whose cumulative explained variance reaches `target` (at least MIN_K)."""
    total = 0.0
    for i, v in enumerate(explained, start=1):
        total += v
        if total >= target - VARIANCE_TOLERANCE:
            return max(i, MIN_K)
    return max(len(explained), MIN_K)


def pca(df: Any, k: int | None, variance: float | None, dim: int) -> PcaResult:
    """Centre the `features` column and project it on its top principal components.

    pyspark.ml's PCAModel.transform does not subtract the mean, so the features are centred
    first (StandardScaler, mean only): the scores are then true PCA scores around 0.
    """
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector, vector_to_array

    vec = df.withColumn("_fvec", array_to_vector("features"))
    # Fitted on ONE partition: with pyspark 4.0.1 here, PCA.fit over several partitions
    # returned wrong components and variances (numpy on the same features disagreed;
    # on one partition they agree, see tests/job). The fit's pass is a d x d Gramian,
    # cheap next to featurizing; the transform below keeps every partition.
    fit_input = vec.coalesce(1)
    scaler = StandardScaler(inputCol="_fvec", outputCol="_centred", withMean=True,
                            withStd=False).fit(fit_input)
    centred_fit = scaler.transform(fit_input)
    centred = scaler.transform(vec)

    def fit(n: int) -> Any:
        return PCA(k=n, inputCol="_centred", outputCol="_pca").fit(centred_fit)

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
