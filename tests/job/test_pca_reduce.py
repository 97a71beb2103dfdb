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


def test_components_have_a_fixed_sign_and_unit_length(spark) -> None:
    """Eigenvectors come with an arbitrary sign: it is fixed (largest loading positive), so
    the same images give the same coordinates in every run."""
    x = _matrix()
    df = spark.createDataFrame([(row.tolist(),) for row in x], "features array<float>")
    result = reduce.pca(df, 6, None, dim=40)
    comps = np.array(result.components)
    assert comps.shape == (6, 40)
    np.testing.assert_allclose(np.linalg.norm(comps, axis=1), 1.0, atol=1e-9)
    assert (comps[np.arange(6), np.abs(comps).argmax(axis=1)] > 0).all()
    np.testing.assert_allclose(result.mean, x.astype(np.float64).mean(axis=0), atol=1e-9)
