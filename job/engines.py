"""Inference engines for the featurize UDF: ONNX Runtime (default) or TensorFlow.

The driver turns the weights into what executors need (`prepare`), Spark broadcasts it,
and each Python worker builds one model from the broadcast value (`build`): a callable
from uint8 pixels (N, size, size, 3) to float32 features (N, 1280).

- ``onnx``: the driver builds the Keras model, converts the traced inference function
  (preprocessing inside) with tf2onnx once, and broadcasts the ONNX model's bytes.
  Executors run it in ONNX Runtime and never import TensorFlow. Measured on the 2-core
  test machine (MobileNetV2 224 px, batch 16): 62 img/s on one thread and 122 on two,
  where TensorFlow's `tf.function` runs 24 and 39; max abs difference 1.6e-5.
- ``tensorflow``: the driver broadcasts the weight arrays, executors rebuild the Keras
  model and trace the same function (the reference path).

Only the driver imports TensorFlow or tf2onnx, and only inside the functions that need it.
The conversion (about 6 s of the driver's time on the test machine, as much as featurizing
700 images) is kept in a cache keyed by the weights' bytes, the input size, the opset and
the converter's versions: a second run on the same weights reads the model back instead.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ONNX = "onnx"
TENSORFLOW = "tensorflow"
ENGINES = (ONNX, TENSORFLOW)
DEFAULT_ENGINE = ONNX
ONNX_OPSET = 17
# tf2onnx binds the converted graph's input by the signature's name; unnamed, it fails.
INPUT_NAME = "pixels"
# Where converted models are kept between runs (the driver's machine only).
CACHE_ENV = "SPARKFAB_MODEL_CACHE"

Infer = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prepared:
    """What the driver broadcasts for an engine, and the facts the manifest records."""

    engine: str
    payload: Any  # ONNX model bytes, or the list of weight arrays
    facts: dict[str, Any] = field(default_factory=dict)


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_backbone(input_size: int, weights: str | None = None) -> Any:
    """MobileNetV2 without top, average pooled: (N, size, size, 3) floats -> (N, 1280)."""
    quiet_tensorflow()
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3),
        include_top=False,
        weights=weights,
        pooling="avg",
    )


def tf_function(weights: list[np.ndarray], input_size: int, threads: int | None = None) -> Any:
    """The traced inference function over uint8 pixels, preprocessing inside the graph.

    MobileNetV2 wants [-1, 1]; no per-call Keras `predict` machinery (about 1.7x slower
    here). `threads` sets TensorFlow's intra-op threads (None: leave them alone).
    """
    quiet_tensorflow()
    import tensorflow as tf

    # Must precede the first TF op in this process; later calls raise, hence the guard.
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
    model = build_backbone(input_size, weights=None)
    model.set_weights(weights)
    spec = tf.TensorSpec([None, input_size, input_size, 3], tf.uint8, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def infer(pixels: Any) -> Any:
        x = tf.cast(pixels, tf.float32) / 127.5 - 1.0
        return model(x, training=False)

    return infer


def to_onnx(weights: list[np.ndarray], input_size: int) -> bytes:
    """The inference function converted to an ONNX model (driver only; seconds)."""
    infer = tf_function(weights, input_size)
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec([None, input_size, input_size, 3], tf.uint8, name=INPUT_NAME)
    proto, _ = tf2onnx.convert.from_function(infer, input_signature=[spec], opset=ONNX_OPSET)
    return bytes(proto.SerializeToString())


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparkfab" / "models")


def _conversion_key(weights: list[np.ndarray], input_size: int) -> str:
    """What the converted model depends on: the weights, the size, the tools' versions."""
    digest = hashlib.sha256()
    versions = [importlib.metadata.version(p) for p in ("tf2onnx", "onnx", "keras")]
    import tensorflow as tf

    digest.update(repr((input_size, ONNX_OPSET, tf.__version__, versions)).encode())
    for w in weights:
        digest.update(repr((w.dtype.str, w.shape)).encode())
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def prepare(engine: str, weights: list[np.ndarray], input_size: int,
            cache_dir: Path | None = None) -> Prepared:
    """Driver: the broadcast value for `engine`, from the weights loaded by Keras."""
    if engine == TENSORFLOW:
        return Prepared(engine, weights, {"engine": engine,
                                          "broadcast_bytes": sum(int(w.nbytes) for w in weights)})
    if engine != ONNX:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    start = time.perf_counter()
    cache = (cache_dir or default_cache_dir()) / f"{_conversion_key(weights, input_size)}.onnx"
    if cache.is_file():
        model, how = cache.read_bytes(), "cached"
    else:
        model, how = to_onnx(weights, input_size), "converted"
        _save(cache, model)
    return Prepared(engine, model, {
        "engine": engine,
        "onnx_opset": ONNX_OPSET,
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "broadcast_bytes": len(model),
        "conversion": how,
        "conversion_s": round(time.perf_counter() - start, 3),
    })


def _save(path: Path, data: bytes) -> None:
    """Best effort, atomic: a read-only home or a full disk only costs the next run time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as fh:
            fh.write(data)
        os.replace(fh.name, path)
    except OSError:
        pass


def import_runtime(engine: str) -> None:
    """Executor: import what build() will need (seconds in a fresh Python worker)."""
    if engine == ONNX:
        import onnxruntime  # noqa: F401
    elif engine == TENSORFLOW:
        quiet_tensorflow()
        import tensorflow  # noqa: F401
    else:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def build(engine: str, payload: Any, input_size: int, threads: int) -> Infer:
    """Executor: one model from the broadcast value, as a numpy -> numpy callable."""
    if engine == ONNX:
        return _onnx_session(payload, threads)
    if engine == TENSORFLOW:
        infer = tf_function(payload, input_size, threads)
        return lambda pixels: infer(pixels).numpy()
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def _onnx_session(model: bytes, threads: int) -> Infer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The same meaning as TensorFlow's setting: one worker per core already fills them.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no per-session warnings in the job's log
    session = ort.InferenceSession(model, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name

    def infer(pixels: np.ndarray) -> np.ndarray:
        return session.run([output], {INPUT_NAME: pixels})[0]

    return infer
