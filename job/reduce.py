"""PCA of the features with pyspark.ml: a fixed k, or the smallest k reaching a variance.

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

    pyspark.ml's PCAModel.transform does not subtract the mean, so the features are centred
    first (StandardScaler, mean only): the scores are then true PCA scores around 0.

    One fit only. Spark's fit always takes the full SVD of the dim x dim covariance, so
    with a variance target the fit keeps every component (the whole spectrum, to choose
    k) and is then cut to its first k components: the same numbers a second fit at k
    would give, without its covariance pass and SVD. The cut matters: a dim x dim model
    rides in every task of every job that projects (13 MB at dim 1280).
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
        model = fit(dim)
        k = choose_k([float(v) for v in model.explainedVariance], variance)
        if k < dim:
            model = _first_components(model, k) or fit(k)
    else:
        model = fit(min(k, dim))
    scores = (
        model.transform(centred)
        .withColumn("pca", vector_to_array("_pca"))
        .drop("_fvec", "_centred", "_pca")
    )
    explained = [float(v) for v in model.explainedVariance]
    components = model.pc.toArray().T  # Spark keeps them as dim x k columns
    return PcaResult(k=len(explained), explained=explained, scores=scores,
                     mean=[float(v) for v in scaler.mean],
                     components=[[float(v) for v in row] for row in components])


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


def _first_components(model: Any, k: int) -> Any | None:
    """The fitted PCAModel cut to its first k components; None where Spark won't allow it.

    Spark keeps the components column-major (dim x K), so the first k are a prefix of its
    values; the model is rebuilt in the JVM through its (package-private) constructor.
    """
    from pyspark import SparkContext
    from pyspark.ml.feature import PCAModel

    try:
        jvm = SparkContext._active_spark_context._jvm  # type: ignore[union-attr]
        java = model._java_obj
        pc, ev = java.pc(), java.explainedVariance()
        if pc.isTransposed():
            return None
        linalg, arrays, dim = jvm.org.apache.spark.ml.linalg, jvm.java.util.Arrays, pc.numRows()
        cut = jvm.org.apache.spark.ml.feature.PCAModel(
            java.uid(),
            linalg.DenseMatrix(dim, k, arrays.copyOfRange(pc.values(), 0, dim * k)),
            linalg.DenseVector(arrays.copyOfRange(ev.values(), 0, k)),
        )
        cut.setInputCol(java.getInputCol()).setOutputCol(java.getOutputCol())
        result = PCAModel(cut)
        result._transfer_params_from_java()
        result._set(k=k)  # pushed to the JVM model by transform(), which checks it
        return result
    except Exception:  # a Spark whose PCAModel differs: the caller fits again instead
        return None
