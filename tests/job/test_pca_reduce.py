"""job/reduce.py against NumPy on a small matrix, in a local SparkSession (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
import reduce

pytestmark = pytest.mark.slow


def _matrix() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.standard_normal((300, 40)) * (1.0 / np.arange(1, 41))).astype(np.float32)


def _numpy_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    return (sv**2) / (sv**2).sum(), centred @ vt.T


@pytest.mark.parametrize("k, variance", [(None, 0.9), (7, None)])
def test_scores_and_variances_match_numpy(spark, k: int | None, variance: float | None) -> None:
    x = _matrix()
    df = spark.createDataFrame([(row.tolist(),) for row in x], "features array<float>")
    result = reduce.pca(df, k, variance, dim=40)
    ratios, scores = _numpy_pca(x)
    expected_k = k or reduce.choose_k(ratios, variance)
    assert result.k == expected_k and len(result.explained) == expected_k
    np.testing.assert_allclose(result.explained, ratios[:expected_k], rtol=1e-6, atol=1e-9)
    got = np.array([r["pca"] for r in result.scores.collect()])
    assert got.shape == (300, expected_k)
    # Components are defined up to sign.
    np.testing.assert_allclose(np.abs(got), np.abs(scores[:, :expected_k]), atol=1e-5)


def test_a_full_fit_is_cut_to_its_first_components_without_refitting(spark) -> None:
    from pyspark.ml.feature import PCA
    from pyspark.ml.functions import array_to_vector

    x = _matrix()
    df = spark.createDataFrame([(row.tolist(),) for row in x], "features array<float>")
    vec = df.withColumn("v", array_to_vector("features"))
    full = PCA(k=40, inputCol="v", outputCol="p").fit(vec)
    cut = reduce._first_components(full, 5)
    assert cut is not None  # the cheap path works on this Spark, not only the fallback
    fitted = PCA(k=5, inputCol="v", outputCol="p").fit(vec)
    assert cut.getK() == 5
    np.testing.assert_allclose(cut.pc.toArray(), fitted.pc.toArray(), atol=1e-9)
    a = np.array([r["p"].toArray() for r in cut.transform(vec).collect()])
    b = np.array([r["p"].toArray() for r in fitted.transform(vec).collect()])
    np.testing.assert_allclose(a, b, atol=1e-9)
