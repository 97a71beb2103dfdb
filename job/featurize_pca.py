"""Featurize images with MobileNetV2 and reduce the features with PCA, in PySpark.

A plain spark-submit entry point (local[*], standalone, YARN, k8s):

    spark-submit job/featurize_pca.py --input s3a://bucket/images --output s3a://bucket/runs/r1

Input: a folder or s3a:// prefix of .jpg/.jpeg/.png files (any letter case), read
recursively; an image's label is its parent folder's name. Outputs under --output:
features.parquet, pca_matrix.csv, errors.csv, manifest.json, two PNG plots, _SUCCESS.
Exit status: 0 done, 2 bad input or settings (one `error:` line), 1 anything else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from typing import Any

# The sibling modules are imported as top-level names: spark-submit puts this file's
# folder on the driver's sys.path, and main() ships them to the executors.
import engines
import featurize
import images
import outputs
import reduce
import store
import zipimport_cache

JOB_MODULES = (images, engines, featurize, reduce, outputs, store, zipimport_cache)
DEFAULT_VARIANCE = 0.95
# Each file counts as this many bytes when Spark packs files into partitions: large next
# to an image, so partitions hold similar numbers of images (the cost is per image).
FILE_OPEN_COST_BYTES = 4 * 1024 * 1024
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
VANISHED_REASON = "changed or removed while the job ran (not featurized; the next run will)"


class JobError(Exception):
    """Bad input or settings: printed as one `error:` line, exit status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _k(text: str) -> int:
    value = int(text)
    if value < reduce.MIN_K:
        raise argparse.ArgumentTypeError(f"must be at least {reduce.MIN_K} (PC1 vs PC2 plot)")
    if value > featurize.FEATURE_DIM:
        raise argparse.ArgumentTypeError(f"at most {featurize.FEATURE_DIM} (the feature size)")
    return value


def _variance(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _input_size(text: str) -> int:
    value = int(text)
    if not 32 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be between 32 and 1024, got {value}")
    return value


def new_run_id() -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{now}-{secrets.token_hex(2)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurize_pca.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input", required=True,
                        help="folder or s3a:// prefix of images; label = parent folder name")
    parser.add_argument("--output", required=True,
                        help="folder or s3a:// prefix for this run; must not exist (or be empty)")
    parser.add_argument("--weights", default=featurize.WEIGHTS_IMAGENET,
                        help="'imagenet' (downloaded by the driver only), a local or s3a:// "
                             ".weights.h5/.keras file, or 'random' (smoke tests: meaningless)")
    reduce_group = parser.add_mutually_exclusive_group()
    reduce_group.add_argument("--k", type=_k, help="number of principal components")
    reduce_group.add_argument("--variance", type=_variance, default=None,
                              help=f"smallest k reaching this explained variance "
                                   f"(default {DEFAULT_VARIANCE} when --k is not given)")
    parser.add_argument("--input-size", type=_input_size, default=224,
                        help="images are resized to this square size for the model")
    parser.add_argument("--batch-size", type=_positive_int,
                        default=featurize.DEFAULT_BATCH_SIZE,
                        help="images per model call")
    parser.add_argument("--engine", choices=engines.ENGINES, default=engines.DEFAULT_ENGINE,
                        help="inference engine on the executors: 'onnx' (ONNX Runtime on a "
                             "model the driver converts once; executors never import "
                             "TensorFlow) or 'tensorflow' (the reference path)")
    parser.add_argument("--tf-threads", type=_positive_int, default=1,
                        help="the engine's intra-op threads per Python worker (one worker per "
                             "core already uses every core)")
    parser.add_argument("--images-per-partition", type=_positive_int, default=256,
                        help="target images per Spark task (fewer on small inputs, so every "
                             "core gets work)")
    parser.add_argument("--run-id", default=None, help="defaults to a UTC timestamp + random")
    parser.add_argument("--features", default=None,
                        help="the feature store (folder or s3a:// prefix) this run reuses and "
                             "appends to (default: features/ in an s3a:// --output's bucket, "
                             f"else {store.DEFAULT_LOCAL} in the working directory)")
    parser.add_argument("--refeaturize", action="store_true",
                        help="featurize every image again, reusing nothing from the store "
                             "(the new rows are still appended, and win over older ones)")
    parser.add_argument("--pca-from", default=None, metavar="RUN_OUTPUT",
                        help="project on the PCA basis of this earlier run's output instead of "
                             "fitting one: coordinates comparable across runs (not with "
                             "--k/--variance)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pca_from and (args.k is not None or args.variance is not None):
        parser.error("--pca-from takes k from the earlier run's basis: drop --k/--variance")
    if args.features is None:
        args.features = store.default_location(args.output)
    if args.k is None and args.variance is None and not args.pca_from:
        args.variance = DEFAULT_VARIANCE
    if args.run_id is None:
        args.run_id = new_run_id()
    return args


@contextmanager
def session_conf(spark: Any, settings: dict[str, str]) -> Iterator[None]:
    """Spark SQL `settings` for the queries run inside the block; the session's own values
    (its defaults, or what spark-defaults.conf says) again after it."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


class Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        print(f"[featurize_pca] {name} ...", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            self.stages[name] = round(time.perf_counter() - start, 3)


def versions(spark: Any, engine: str = engines.TENSORFLOW) -> dict[str, str]:
    import keras
    import numpy
    import pandas
    import PIL
    import pyarrow
    import tensorflow

    return {
        "spark": spark.version,
        "python": platform.python_version(),
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
        "pillow": PIL.__version__,
        **(_onnx_versions() if engine == engines.ONNX else {}),
    }


def _onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tf2onnx

    return {"onnxruntime": onnxruntime.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__}


def lapack_implementation(spark: Any) -> str:
    """Which LAPACK Spark ML uses for PCA's SVD: a native one (JNILAPACK) is ~7x faster."""
    try:
        jvm = spark.sparkContext._jvm
        return str(jvm.dev.ludovic.netlib.lapack.LAPACK.getInstance().getClass().getSimpleName())
    except Exception:  # an older or repackaged netlib: not worth failing a run for
        return "unknown"


def resolve_weights(spark: Any, spec: str, input_size: int) -> tuple[list[Any], str | None]:
    """Load the weights on the driver; a remote file is copied to a local temp file first.

    Also returns the sha256 of the weights file read (None for imagenet and random).
    """
    if spec == featurize.WEIGHTS_RANDOM:
        print(featurize.RANDOM_WARNING, file=sys.stderr, flush=True)
    if "://" in spec and not spec.startswith("file:"):
        if not featurize.is_weights_file(spec):
            return featurize.load_weights(spec, input_size), None  # raises the usage error
        remote = outputs.Store(spark, spec)
        if not remote.exists():
            raise featurize.WeightsError(f"weights file not found: {spec}")
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, os.path.basename(spec))
            remote.copy_to_local(local)
            return (featurize.load_weights(spec, input_size, local_file=local),
                    featurize.file_sha256(local))
    path = spec.removeprefix("file:")
    weights = featurize.load_weights(path, input_size)
    return weights, featurize.file_sha256(path) if featurize.is_weights_file(path) else None


def in_background(fn: Any, *args: Any) -> Future[Any]:
    """fn(*args) on a thread, its result or exception in the future returned. run() waits
    for each one on its way out; daemon, so an interrupted interpreter is not held."""
    future: Future[Any] = Future()

    def work() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # re-raised by future.result() in the main thread
            future.set_exception(exc)

    threading.Thread(target=work, name=getattr(fn, "__name__", "background"),
                     daemon=True).start()
    return future


def _warm_workers(spark: Any, engine: str) -> None:
    """One task per core that starts a Python worker and imports the engine in it: Spark
    reuses those workers for the featurize job. A pandas UDF, as featurize's: an RDD's
    Python workers are another pool (other environment), which the job would not reuse.
    Also the session's first job: the JVM's first-use costs are paid here too."""
    udf = featurize.make_warm_up_udf(engine)
    n = spark.sparkContext.defaultParallelism
    spark.range(0, n, 1, n).select(udf("id")).collect()


def _wait_quietly(future: Future[Any]) -> None:
    """A warm-up that failed is only time lost: the featurize job meets the same error
    and reports it."""
    with suppress(Exception):
        future.result()


def is_remote(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file:")


def prepare_model(spark: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Weights loaded, their digest, the features' fingerprint and the engine's broadcast
    value (the ONNX conversion, or its cached copy): all the driver's model work."""
    weights, sha256 = resolve_weights(spark, args.weights, args.input_size)
    fp_name, fp_description = store.fingerprint(weights, args.input_size, args.engine)
    prepared = engines.prepare(args.engine, weights, args.input_size)
    return {"sha256": sha256, "fp_name": fp_name, "fp_description": fp_description,
            "prepared": prepared}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        manifest = run(args)
    except (JobError, featurize.WeightsError, outputs.OutputError, reduce.BasisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(manifest))  # one line, last: for a caller that cannot read --output
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Work on other threads (the model's preparation, the workers' warm-up) is waited for
    # on every way out: a process ending under TensorFlow's or Spark's feet can abort.
    background: list[Future[Any]] = []
    try:
        return _run_job(args, background)
    finally:
        for future in background:
            _wait_quietly(future)


def _run_job(args: argparse.Namespace, background: list[Future[Any]]) -> dict[str, Any]:
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    timer = Timer()
    # The driver's model work (TensorFlow's import, the weights, the ONNX conversion: seconds
    # of Python) runs while the JVM starts the SparkContext. Weights in S3 need Spark's
    # filesystem first: for them only the import goes ahead.
    model = None if is_remote(args.weights) else in_background(prepare_model, None, args)
    background.append(model or in_background(featurize.import_keras))
    with timer.stage("spark_session"):
        spark = SparkSession.builder.appName(f"featurize_pca {args.run_id}").getOrCreate()
    sc = spark.sparkContext
    for module in JOB_MODULES:
        # A module imported from a --py-files zip is already shipped by spark-submit, and
        # its __file__ (inside the zip) is no file addPyFile can read.
        if os.path.isfile(module.__file__):
            sc.addPyFile(module.__file__)

    input_store = outputs.Store(spark, args.input)
    if not input_store.exists():
        raise JobError(f"input path does not exist: {args.input}")
    outputs.check_output_free(spark, args.output)
    temp = outputs.temp_location(args.output, args.run_id)
    # The Python workers start while the driver prepares the model and lists the input.
    warm = in_background(_warm_workers, spark, args.engine)
    background.append(warm)
    committed = kept = False
    try:
        manifest = _run(spark, args, timer, temp, model, warm)
        with timer.stage("commit"):
            try:
                outputs.commit(spark, temp, args.output)
            except outputs.OutputTaken:
                kept = True  # the finished run is all the user has: the error names it
                raise
            committed = True
        manifest["timings_s"] = {**timer.stages,
                                 "total": round(time.perf_counter() - started, 3)}
        final = outputs.Store(spark, args.output)
        final.write_json(outputs.MANIFEST, manifest)
        final.write_bytes(outputs.MARKER, b"")  # last: the run is complete
        return manifest
    finally:
        if not committed and not kept:
            outputs.Store(spark, temp).delete()


def _pca_basis(spark: Any, source: str, fingerprint: str) -> tuple[Any, dict[str, Any]]:
    """The basis (mean, components, explained) an earlier run saved, and its description."""
    earlier = outputs.Store(spark, source)
    if not earlier.exists(outputs.MARKER):
        raise JobError(f"--pca-from {source}: not a complete run (no {outputs.MARKER} there)")
    if not earlier.exists(outputs.PCA_BASIS):
        raise JobError(f"--pca-from {source}: the run holds no {outputs.PCA_BASIS} (runs "
                       "made before the basis was kept); run once without --pca-from")
    basis = reduce.read_basis(earlier.read_bytes(outputs.PCA_BASIS), fingerprint, source)
    try:
        their = json.loads(earlier.read_bytes(outputs.MANIFEST))
    except Exception:  # the basis is what matters; the run id is for the record
        their = {}
    return basis, {"source": "pca_from", "run": source, "run_id": their.get("run_id")}


def _run(spark: Any, args: argparse.Namespace, timer: Timer, temp: str,
         model_ahead: Future[dict[str, Any]] | None,
         warm: Future[Any]) -> dict[str, Any]:
    from pyspark.sql import functions as F

    sc = spark.sparkContext
    with timer.stage("load_weights"):  # only what the session's start did not hide
        model = (model_ahead.result() if model_ahead is not None
                 else prepare_model(spark, args))
        weights_sha256, fp_name = model["sha256"], model["fp_name"]
        fp_description, prepared = model["fp_description"], model["prepared"]
        bc_model = sc.broadcast(prepared.payload)
    builds = sc.accumulator(set(), featurize.SetAccumulator())
    with timer.stage("list"):
        files = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .load(args.input)
        )
        # From Spark's file index (built by load()): no Spark job, which would cost a
        # few seconds of a short run. Zero-byte files are in the index but not in scans:
        # they are failures the driver counts itself.
        listed = store.list_index(files)
        n_files = len(listed)
        inputs = [f for f in listed if images.is_image_path(f.path)]
        n_images = len(inputs)
        n_skipped = n_files - n_images
        if n_images == 0:
            raise JobError(f"no .jpg/.jpeg/.png files under {args.input}"
                           + (f" ({n_skipped} other files skipped)" if n_skipped else ""))
        avg_bytes = sum(f.size for f in listed) // n_files
        files = files.where(F.col("path").rlike(images.IMAGE_PATH_REGEX))
        # Partitions of about --images-per-partition images (Spark still splits small
        # inputs across all cores); the model is built once per Python worker anyway.
        spark.conf.set("spark.sql.files.openCostInBytes", str(FILE_OPEN_COST_BYTES))
        spark.conf.set("spark.sql.files.maxPartitionBytes",
                       str(args.images_per_partition * (avg_bytes + FILE_OPEN_COST_BYTES)))

    features = store.FeatureStore(spark, args.features, fp_name, fp_description)
    basis = None
    if args.pca_from:
        basis, basis_info = _pca_basis(spark, args.pca_from, fp_name)

    udf = featurize.make_udf(bc_model, args.input_size, args.batch_size, args.tf_threads,
                             builds, engine=args.engine)
    store_timer = Timer()
    partitions = 0
    batch = None
    added: dict[store.Key, store.Stored] = {}
    try:
        # Its own stage: the workers serve PCA too, and a run with nothing new waits as
        # long. The warm-up's tasks hold the cores meanwhile.
        with timer.stage("workers_ready"):
            _wait_quietly(warm)
        with timer.stage("featurize"):
            with store_timer.stage("read_keys"):
                known = {} if args.refeaturize else features.keys()
            empty = [f for f in inputs if f.size == 0]
            todo = [f for f in inputs if f.size > 0 and f.key not in known]
            # path -> the batch its row is taken from (latest batch wins, see store.py)
            chosen = {f.path: known[f.key].batch for f in inputs if f.key in known}
            ok_flags = {f.path: known[f.key].ok for f in inputs if f.key in known}
            if todo:
                batch = store.new_batch_id()
                source = (files if len(todo) == n_images - len(empty)
                          else store.select_files(files, todo))
                rows = featurize.feature_rows(source, udf)
                # One model batch per Arrow batch: a task's first images reach its Python
                # worker once that many files are read (a fresh driver reads them slowly).
                # Only here: PCA's passes want large batches.
                arrow_batch = {ARROW_BATCH_CONF: str(args.batch_size)}
                with store_timer.stage("featurize_write_commit"), session_conf(
                        spark, arrow_batch):
                    added = features.append(rows, batch,
                                            {"run_id": args.run_id, "images": len(todo)})
                seconds = store_timer.stages["featurize_write_commit"]
                # Counted from the batch's files, not planned ahead (source.rdd costs a
                # second query planning, 0.3-0.7 s here): a task writes one part file.
                partitions = features.part_files(batch)
                print(f"[featurize_pca] featurize: {len(todo)} images in {seconds:.1f} s, "
                      f"{len(todo) / max(seconds, 1e-3):.1f} img/s ({args.engine})",
                      file=sys.stderr, flush=True)
                for (path, _, _), stored in added.items():
                    chosen[path] = batch
                    ok_flags[path] = stored.ok
            # Changed or removed between the listing and the read: not featurized.
            vanished = sorted(f.path for f in todo if f.path not in chosen)
        n_ok = sum(1 for ok in ok_flags.values() if ok)
        n_failed = n_images - n_ok
        n_reused = n_images - len(todo) - len(empty)
        current = features.read(chosen)
        if n_ok < 2:
            examples = "; ".join(f"{r['path']}: {r['error']}" for r in
                                 current.where("error IS NOT NULL").limit(3).collect())
            raise JobError(f"PCA needs at least 2 images that decode; {n_ok} of {n_images} "
                           f"did (e.g. {examples or 'empty files'})")
        with timer.stage("pca"):
            good = current.where("error IS NULL").select(
                "path", F.element_at(F.split("path", "/"), -2).alias("label"),  # = label_of
                "features")
            if basis is None:
                result = reduce.pca(good, args.k, args.variance if args.k is None else None,
                                    featurize.FEATURE_DIM)
                basis_info = {"source": "fitted"}
            else:
                result = reduce.project(good, *basis)
            scores = result.scores.persist()
        out = outputs.Store(spark, temp)
        with timer.stage("write"):
            scores.select("path", "label", "features", "pca").write.parquet(
                out.uri(outputs.PARQUET))
            out.write_bytes(outputs.PCA_BASIS, reduce.basis_parquet(result, fp_name))
            pcs = [f"pc_{i + 1}" for i in range(result.k)]
            outputs.write_single_csv(
                scores.select("path", "label",
                              *[F.col("pca")[i].alias(name) for i, name in enumerate(pcs)]),
                out, outputs.CSV_MATRIX, ["path", "label", *pcs])
            if n_failed == 0:  # the usual case: a header, and no Spark job to say so
                outputs.write_csv_header(out, outputs.ERRORS, ["path", "reason"])
            else:
                errors = current.where("error IS NOT NULL").select(
                    "path", F.col("error").alias("reason"))
                extra = ([(f.path, images.EMPTY_FILE_REASON) for f in empty]
                         + [(p, VANISHED_REASON) for p in vanished])
                if extra:
                    errors = errors.unionByName(spark.createDataFrame(
                        extra, "path string, reason string"))
                outputs.write_single_csv(errors, out, outputs.ERRORS, ["path", "reason"])
        with timer.stage("plots"):
            fraction = min(1.0, outputs.MAX_SCATTER_POINTS / n_ok)
            sample = scores if fraction >= 1.0 else scores.sample(fraction=fraction, seed=7)
            points = [(r["label"], float(r["pc1"]), float(r["pc2"])) for r in sample.select(
                "label", F.col("pca")[0].alias("pc1"), F.col("pca")[1].alias("pc2")).collect()]
            out.write_bytes(outputs.SCATTER_PNG, outputs.scatter_png(
                points, f"PC1 vs PC2 of {n_ok} images (run {args.run_id})"))
            out.write_bytes(outputs.VARIANCE_PNG, outputs.variance_png(
                result.explained, result.cumulative,
                args.variance if args.k is None and basis is None else None))
        scores.unpersist()
    finally:
        bc_model.unpersist()
    image_bytes = sum(f.size for f in inputs)
    # The store as this run left it (a concurrent run's batch may have joined since).
    all_keys = features.keys() if args.refeaturize else {**known, **added}

    manifest: dict[str, Any] = {
        "run_id": args.run_id,
        "status": "complete",
        "input": args.input,
        "output": args.output,
        "counts": {"input": n_images, "ok": n_ok, "failed": n_failed, "skipped": n_skipped,
                   "files_seen": n_files},
        "input_bytes": image_bytes,
        "store": {
            "path": args.features,
            "fingerprint": fp_name,
            "mode": "refeaturize" if args.refeaturize else "incremental",
            "reused": n_reused,
            "featurized_now": len(todo),
            "failed": n_failed,
            "failed_reused": sum(1 for f in inputs if f.key in known and not known[f.key].ok),
            "batch": batch,
            "size": features.size(all_keys),
            "timings_s": dict(store_timer.stages),
        },
        "pca": {"k": result.k,
                "variance_target": args.variance if args.k is None and basis is None else None,
                "explained_variance": result.explained,
                "cumulative_explained_variance": result.cumulative,
                "basis": basis_info},
        "weights": {"spec": args.weights, "sha256": weights_sha256, "loaded_on": "driver",
                    **prepared.facts,
                    "executor_model_builds": sorted(builds.value)},
        "spark": {"master": sc.master, "default_parallelism": sc.defaultParallelism,
                  "input_partitions": partitions, "lapack": lapack_implementation(spark)},
        "settings": vars(args),
        "versions": versions(spark, args.engine),
        "files": [outputs.PARQUET, outputs.CSV_MATRIX, outputs.ERRORS, outputs.MANIFEST,
                  outputs.SCATTER_PNG, outputs.VARIANCE_PNG, outputs.PCA_BASIS],
        "timings_s": dict(timer.stages),
    }
    return manifest


if __name__ == "__main__":
    raise SystemExit(main())
