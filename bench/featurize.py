"""Featurization benchmark: (a) raw engines, (b) the job end to end, (c) the seeds' pattern.

Same images (generated samples), same model and weights, same cores, one run:
  (a) images/s of each engine alone on pre-decoded uint8 tensors, no Spark, every core in
      one process (ONNX Runtime and TensorFlow; (a) is the fastest of them: the limit);
  (b) images/s of job/featurize_pca.py in Spark local mode, once per engine: list, read,
      decode, featurize, PCA, write every output (timed from a ready SparkSession, like
      (c)), with its fixed cost per stage;
  (c) images/s of bench/seed_pattern.py: SCALAR_ITER UDF building the model per task,
      PIL resize to 224, model.predict, Arrow batches of 1024, Spark/TF defaults.
Prints `b onnx / b tensorflow`, `b onnx / a onnx` and `b onnx / c` (targets at 2 cores on
2,000 images: 2.5, 0.85 and 6).

    .venv/bin/python bench/featurize.py --images 2000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "job"))
sys.path.insert(0, str(REPO))

import engines  # noqa: E402
import featurize  # noqa: E402
import images  # noqa: E402

from sparkfab import demo_weights, localjob, samples  # noqa: E402

WORKDIR = REPO / ".cache" / "bench"


def prepare(n: int) -> tuple[Path, list[Path]]:
    per_class = math.ceil(n / len(samples.CLASSES))
    folder = WORKDIR / f"images-{per_class}"
    samples.generate(folder, per_class)
    files = sorted(folder.rglob("*.jpg"))
    return folder, files


def raw_model(pixels, weights: list, engine: str, size: int, batch: int,
              threads: int) -> float:
    """(a): the engine's model alone over pre-decoded tensors, as the executors build it."""
    import tempfile

    with tempfile.TemporaryDirectory() as empty_cache:  # a fresh conversion, timed
        prepared = engines.prepare(engine, weights, size, cache_dir=Path(empty_cache))
    if "conversion_s" in prepared.facts:
        print(f"    {engine}: conversion on the driver, not cached: "
              f"{prepared.facts['conversion_s']:.1f} s", flush=True)
    payload = prepared.payload
    infer = engines.build(engine, payload, size, threads)
    infer(pixels[:batch])  # trace / first run, warm up
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        infer(pixels[i:i + batch])
    return len(pixels) / (time.perf_counter() - start)


def job(folder: Path, size: int, batch: int, cores: int, weights_file: Path,
        engine: str) -> dict:
    """(b): the real job through the same local runner `fab run-job` uses."""
    run_id = localjob.new_run_id()
    opts = localjob.JobOptions(input=str(folder), output=str(WORKDIR / "runs" / run_id),
                               weights=str(weights_file), engine=engine, input_size=size,
                               batch_size=batch, run_id=run_id,
                               features=str(WORKDIR / "features" / run_id))
    wall = time.perf_counter()
    manifest = localjob.run_local(opts, cores=cores)
    wall = time.perf_counter() - wall
    shutil.rmtree(opts.output, ignore_errors=True)
    shutil.rmtree(str(opts.features), ignore_errors=True)  # an empty store: all featurized
    # From a ready SparkSession to the end, as (c) is timed: Spark's own start is not work.
    timings = manifest["timings_s"]
    ok, seconds = manifest["counts"]["ok"], timings["total"] - timings["spark_session"]
    return {"images": ok, "seconds": seconds, "rate": ok / seconds, "wall_rate": ok / wall,
            "stages": timings, "partitions": manifest["spark"]["input_partitions"],
            "lapack": manifest["spark"].get("lapack"),
            "conversion_s": manifest["weights"].get("conversion_s")}


# The job's stages around featurize: its fixed cost, printed one by one.
FIXED_STAGES = ("list", "load_weights", "workers_ready", "pca", "write", "plots", "commit")


def fixed_costs(b: dict) -> str:
    t = b["stages"]
    parts = [f"session {t.get('spark_session', 0):.1f}"]
    for name in FIXED_STAGES:
        label = {"load_weights": "weights+conversion"}.get(name, name)
        parts.append(f"{label} {t.get(name, 0):.1f}")
    if b.get("conversion_s") is not None:
        parts[2] += f" (conversion {b['conversion_s']:.1f})"
    fixed = sum(t.get(name, 0) for name in FIXED_STAGES)
    return (f"{', '.join(parts)}; featurize {t['featurize']:.1f} "
            f"({b['images'] / t['featurize']:.1f} img/s); fixed total {fixed:.1f} s")


def seed(folder: Path, cores: int, weights_file: Path) -> dict:
    """(c): bench/seed_pattern.py under spark-submit, same master and Python."""
    out = WORKDIR / "seed-out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(localjob.spark_submit()), "--master", f"local[{cores}]", "--driver-memory", "2g",
           *localjob.conf_args(localjob.LOCAL_SPARK_CONF),
           str(REPO / "bench" / "seed_pattern.py"), str(folder), str(out), str(weights_file)]
    proc = subprocess.run(cmd, env=localjob.local_env(), stdout=subprocess.PIPE, text=True,
                          check=True)
    shutil.rmtree(out, ignore_errors=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rate"] = result["images"] / result["seconds"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="at least this many images")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=featurize.DEFAULT_BATCH_SIZE,
                        help="for (a) and (b); (c) uses Arrow batches of 1024, as the seeds did")
    parser.add_argument("--skip-seed", action="store_true", help="do not run (c)")
    parser.add_argument("--engines", nargs="+", choices=engines.ENGINES,
                        default=list(engines.ENGINES), help="engines for (a) and (b)")
    args = parser.parse_args(argv)

    weights_file = REPO / demo_weights.DEFAULT_OUT
    if not weights_file.exists():
        demo_weights.build(weights_file)
    folder, files = prepare(args.images)
    print(f"{len(files)} images ({folder}), {args.cores} cores, input {args.input_size}, "
          f"batch {args.batch_size}", flush=True)
    weights = featurize.load_weights(str(weights_file), args.input_size)

    import numpy as np

    pixels = np.stack([images.decode(f.read_bytes(), args.input_size) for f in files])
    raw = {}
    for engine in args.engines:
        raw[engine] = raw_model(pixels, weights, engine, args.input_size, args.batch_size,
                                args.cores)
        print(f"(a) raw {engine}, pre-decoded tensors, {args.cores} threads, one process: "
              f"{raw[engine]:.1f} img/s", flush=True)
    del pixels
    fastest = max(raw, key=raw.__getitem__)
    print(f"(a) = raw {fastest}: {raw[fastest]:.1f} img/s (the fastest engine)", flush=True)
    e2e = {}
    for engine in args.engines:
        b = e2e[engine] = job(folder, args.input_size, args.batch_size, args.cores,
                              weights_file, engine)
        print(f"(b) end to end {engine}, local[{args.cores}]: {b['rate']:.1f} img/s "
              f"({b['images']} images in {b['seconds']:.1f} s; with JVM start-up "
              f"{b['wall_rate']:.1f} img/s; {b['partitions']} partitions; LAPACK "
              f"{b['lapack']})", flush=True)
        print(f"    {engine} stages, s: {fixed_costs(b)}", flush=True)
    onnx, tf = e2e.get(engines.ONNX), e2e.get(engines.TENSORFLOW)
    if onnx and tf:
        print(f"b onnx / b tensorflow = {onnx['rate'] / tf['rate']:.2f}  (target >= 2.5)")
    for engine, b in e2e.items():
        print(f"b {engine} / a {engine} = {b['rate'] / raw[engine]:.2f}"
              + ("  (target >= 0.85)" if engine == engines.ONNX else ""))
    if not args.skip_seed:
        c = seed(folder, args.cores, weights_file)
        print(f"(c) seed pattern, local[{args.cores}]: {c['rate']:.1f} img/s "
              f"({c['images']} images in {c['seconds']:.1f} s; {c['partitions']} partitions)")
        for engine, b in e2e.items():
            print(f"b {engine} / c = {b['rate'] / c['rate']:.2f}"
                  + ("  (target >= 6)" if engine == engines.ONNX else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
