"""job/engines.py in one process: the ONNX conversion, its cache, and both engines agreeing."""

from __future__ import annotations

from pathlib import Path

import engines
import featurize
import numpy as np
import pytest

pytestmark = pytest.mark.slow
SIZE = 96


def test_the_converted_model_is_cached_and_agrees_with_tensorflow(
    tmp_path: Path, demo_weights_file: Path
) -> None:
    weights = featurize.load_weights(str(demo_weights_file), SIZE)
    first = engines.prepare(engines.ONNX, weights, SIZE, cache_dir=tmp_path)
    assert first.facts["conversion"] == "converted" and first.facts["onnx_opset"] == 17
    again = engines.prepare(engines.ONNX, weights, SIZE, cache_dir=tmp_path)
    assert again.facts["conversion"] == "cached" and again.payload == first.payload
    assert again.facts["conversion_s"] < first.facts["conversion_s"]
    # Other weights are another model, never the cached one.
    other = [w * 0.5 for w in weights]
    assert engines._conversion_key(other, SIZE) != engines._conversion_key(weights, SIZE)
    assert engines._conversion_key(weights, SIZE + 32) != engines._conversion_key(weights, SIZE)

    pixels = np.random.default_rng(3).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    onnx = engines.build(engines.ONNX, first.payload, SIZE, threads=1)(pixels)
    tf = engines.build(engines.TENSORFLOW, weights, SIZE, threads=1)(pixels)
    assert onnx.shape == tf.shape == (5, featurize.FEATURE_DIM) and onnx.dtype == np.float32
    rel = np.linalg.norm(onnx - tf, axis=1) / np.linalg.norm(tf, axis=1)
    assert rel.max() < 1e-4, rel.max()
