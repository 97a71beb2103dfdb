"""MobileNetV2 features: weights loaded once on the driver, broadcast, model kept per worker.

The driver resolves ``--weights`` (imagenet | a .weights.h5/.keras file | random) into a
list of NumPy arrays with Keras, and `engines.prepare` turns them into what the engine's
executors need (ONNX model bytes by default; see engines.py), which Spark broadcasts.
Executors never open a model file and never download: the pandas UDF builds the model from
the broadcast value once per Python worker process and keeps it in a module global across
tasks (Spark reuses Python workers), so a partition costs no model build.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import engines
import images
import numpy as np
import pandas as pd
import zipimport_cache

FEATURE_DIM = 1280  # MobileNetV2 alpha 1.0, global average pooling
# Images per model call. Small batches keep MobileNetV2's activations in the CPU caches:
# at 224 px on the 2-core test machine, one TF thread ran 40 img/s at 16, 31 at 32 and
# 27 at 64 (two threads: 60, 45, 49).
DEFAULT_BATCH_SIZE = 16
IMAGENET_SIZES = (96, 128, 160, 192, 224)  # the sizes Keras ships ImageNet weights for
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_RANDOM = "random"
WEIGHTS_FILE_SUFFIXES = (".weights.h5", ".keras")
# Spark SQL type of the UDF's result: features for a good image, a reason for a bad one.
RESULT_SCHEMA = "features array<float>, error string"
# What turns bytes into the model's input (images.decode, then x / 127.5 - 1 in the graph),
# named for the feature store's fingerprint: change it when the pixels would change.
PREPROCESSING = "pillow-decode,jpeg-draft,rgb-alpha-on-white,bilinear-resize,x/127.5-1;v1"

RANDOM_WARNING = """
##########################################################################
#  WARNING: --weights random: the network is randomly initialised.       #
#  The features and the PCA are MEANINGLESS. Use it for smoke tests only. #
##########################################################################
"""


class WeightsError(Exception):
    """--weights names something that cannot be used; the message says why."""


build_backbone = engines.build_backbone


def import_keras() -> None:
    engines.quiet_tensorflow()
    import keras  # noqa: F401


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_weights_file(spec: str) -> bool:
    return spec.endswith(WEIGHTS_FILE_SUFFIXES)


def load_weights(spec: str, input_size: int, local_file: str | None = None) -> list[np.ndarray]:
    """The weights named by ``spec``, as arrays (driver only).

    ``local_file`` is where a remote (s3a://) ``spec`` was copied to by the caller.
    """
    if spec == WEIGHTS_RANDOM:
        return build_backbone(input_size, weights=None).get_weights()
    if spec == WEIGHTS_IMAGENET:
        if input_size not in IMAGENET_SIZES:
            raise WeightsError(
                f"ImageNet weights exist for input sizes {IMAGENET_SIZES}, not {input_size}"
            )
        return build_backbone(input_size, weights="imagenet").get_weights()
    if not is_weights_file(spec):
        raise WeightsError(
            f"--weights {spec!r}: expected 'imagenet', 'random' or a path ending in "
            f"{' or '.join(WEIGHTS_FILE_SUFFIXES)}"
        )
    path = local_file or spec
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {spec}")
    model = build_backbone(input_size, weights=None)
    try:
        if spec.endswith(".keras"):
            _copy_from_saved_model(model, path)
        else:
            model.load_weights(path)
    except WeightsError:
        raise
    except Exception as exc:  # Keras raises ValueError/OSError/KeyError for bad files
        raise WeightsError(f"cannot load MobileNetV2 weights from {spec}: {exc}") from None
    return model.get_weights()


def _copy_from_saved_model(model: Any, path: str) -> None:
    """A whole saved model: take a MobileNetV2 backbone from it, by layer name."""
    import keras

    saved = keras.models.load_model(path, compile=False)
    candidates = [saved] + [layer for layer in saved.layers if hasattr(layer, "layers")]
    for source in candidates:
        donors = {layer.name: layer for layer in source.layers if layer.weights}
        wanted = [layer for layer in model.layers if layer.weights]
        if all(layer.name in donors for layer in wanted):
            for layer in wanted:
                layer.set_weights(donors[layer.name].get_weights())
            return
    raise WeightsError(f"{path} holds no MobileNetV2 (alpha 1.0) backbone")


class SetAccumulator:
    """AccumulatorParam of sets: executors report which process built a model from what."""

    def zero(self, value: set[str]) -> set[str]:
        return set()

    def addInPlace(self, a: set[str], b: set[str]) -> set[str]:
        a |= b
        return a


# ---- executor side -------------------------------------------------------------------

# One model per Python worker process, keyed by what it was built from. A new broadcast
# (another job in the same worker) or other settings rebuild it.
_MODEL_LOCK = threading.Lock()
_MODEL: dict[tuple[str, str, int, int], engines.Infer] = {}


def _infer_fn(bc_model: Any, bc_id: str, engine: str, input_size: int, threads: int,
              builds: Any) -> engines.Infer:
    key = (bc_id, engine, input_size, threads)
    with _MODEL_LOCK:
        if key not in _MODEL:
            _MODEL.clear()
            _MODEL[key] = engines.build(engine, bc_model.value, input_size, threads)
            if builds is not None:
                # Evidence for the manifest: which worker built a model, from what.
                builds.add({f"pid {os.getpid()}: {engine} model built from broadcast {bc_id}"})
        return _MODEL[key]


def _build_infer_fn(weights: list[np.ndarray], input_size: int, tf_threads: int) -> Any:
    """TensorFlow's traced function (bench/featurize.py's reference engine)."""
    return engines.tf_function(weights, input_size, tf_threads)


def _decode_batch(contents: list[bytes | None], size: int) -> tuple[np.ndarray, list[str | None]]:
    pixels = np.empty((len(contents), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = [None] * len(contents)
    good = 0
    for i, content in enumerate(contents):
        try:
            pixels[good] = images.decode(content, size)
            good += 1
        except images.DecodeError as exc:
            errors[i] = str(exc)
        except Exception as exc:  # anything else from a hostile file is still one bad row
            errors[i] = f"decode failed: {type(exc).__name__}: {exc}"
    return pixels[:good], errors


def _chunks(batches: Iterator[pd.Series], size: int) -> Iterator[list[bytes | None]]:
    for series in batches:
        values = series.tolist()
        for start in range(0, len(values), size):
            yield values[start:start + size]


def new_broadcast_id() -> str:
    """Identifies a broadcast in the per-worker cache (executors cannot ask it its id)."""
    return secrets.token_hex(8)


def make_warm_up_udf(engine: str) -> Any:
    """A pandas UDF that starts a Python worker ready for make_udf's UDF: the job's
    modules, pandas, Arrow, Pillow and the engine's runtime imported, and its later tasks
    spared re-reading pyspark.zip (zipimport_cache). It needs no model,
    so it runs while the driver still prepares one; the model is built from the
    broadcast by the first featurize batch (an ONNX session: ~0.1 s)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")  # type: ignore[call-overload]
    def warm_up(ids: pd.Series) -> pd.Series:
        zipimport_cache.install()  # for the tasks this worker runs next
        engines.import_runtime(engine)
        return ids

    return warm_up


def make_udf(
    bc_model: Any, input_size: int, batch_size: int, tf_threads: int, builds: Any = None,
    engine: str = engines.DEFAULT_ENGINE,
) -> Any:
    """The iterator pandas UDF: image bytes -> struct(features, error).

    `bc_model` broadcasts `engines.prepare(engine, ...).payload`; `tf_threads` is the
    engine's intra-op threads per Python worker (TensorFlow's or ONNX Runtime's).
    """
    from pyspark.sql.functions import pandas_udf

    bc_id = new_broadcast_id()  # names this broadcast in the workers' model cache

    @pandas_udf(RESULT_SCHEMA)  # type: ignore[call-overload]
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        zipimport_cache.install()  # where the warm-up ran elsewhere
        infer = _infer_fn(bc_model, bc_id, engine, input_size, tf_threads, builds)
        # Decode the next batch on a thread while the model runs this one: Pillow releases
        # the GIL.
        with ThreadPoolExecutor(max_workers=1) as pool:
            chunks = _chunks(batches, batch_size)
            pending = None
            for chunk in chunks:
                future = pool.submit(_decode_batch, chunk, input_size)
                if pending is not None:
                    yield _run(infer, *pending)
                pending = (future.result(), len(chunk))
            if pending is not None:
                yield _run(infer, *pending)

    return featurize


def feature_rows(files: Any, udf: Any) -> Any:
    """A binaryFile DataFrame's rows featurized by make_udf's `udf`, in the feature store's
    columns and their order (path, size, mtime_ms, features, error).

    One select: Spark evaluates the UDF once for both of its fields (its planner merges
    equal Python UDF calls into one ArrowEvalPython; tests/job/test_store.py checks), and
    each DataFrame step costs an analysis of the whole plan (about 40 ms on a fresh driver).
    """
    from pyspark.sql import functions as F

    result = udf("content")
    return files.select("path", F.col("length").alias("size"),
                        F.unix_millis("modificationTime").alias("mtime_ms"),
                        result["features"].alias("features"), result["error"].alias("error"))


def _run(infer: engines.Infer, decoded: tuple[np.ndarray, list[str | None]], n: int
         ) -> pd.DataFrame:
    pixels, errors = decoded
    if len(pixels) == 1:
        # TF takes another code path for a batch of one: its features differ in the last
        # bits from the same image's in any larger batch (2..36 all agree here). Padding
        # keeps an image's features independent of its batch, as the feature store needs.
        feats = infer(np.concatenate([pixels, pixels]))[:1]
    elif len(pixels):
        feats = infer(pixels)
    else:
        feats = np.empty((0, FEATURE_DIM), np.float32)
    out: list[np.ndarray | None] = [None] * n
    it = iter(feats)
    for i, err in enumerate(errors):
        if err is None:
            out[i] = next(it)
    return pd.DataFrame({"features": out, "error": errors})
