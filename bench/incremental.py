"""Incremental featurization benchmark: a second run over a grown input, against the first.

Run 1: the job on N images with an empty feature store. Then 10% new images are added
(other generated images of the same classes). Run 2: the job on the grown input with the
same store. Both through the local runner `fab run-job` uses, same cores, one process
each. Prints, for run 2 over run 1:
  - the featurize stage's time (reading the store's keys, finding what is new, reading,
    decoding and featurizing it, writing and committing the batch): target <= 0.2;
  - the same with the wait for the Python workers' start (the job's `workers_ready`
    stage, a fixed cost of every run: PCA needs the workers too) counted in;
  - the whole run's time (from a ready SparkSession, as bench/featurize.py times it).

    .venv/bin/python bench/incremental.py --images 2000
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sparkfab import class_archive, demo_weights, localjob, samples  # noqa: E402
from sparkfab.java import java_home  # noqa: E402

WORKDIR = REPO / ".cache" / "bench" / "incremental"


PRIME_IMAGES = 100


def link_input(folder: Path, files: list[Path]) -> None:
    for f in files:
        (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(f, folder / f.parent.name / f.name)


def prepare(n: int, new_fraction: float) -> tuple[Path, list[Path], list[Path]]:
    """Generated samples: the first n (by name) in the input, the next ones held back."""
    extra = math.ceil(n * new_fraction)
    per_class = math.ceil((n + extra) / len(samples.CLASSES))
    pool = REPO / ".cache" / "bench" / f"images-{per_class}"
    samples.generate(pool, per_class)
    files = sorted(pool.rglob("*.jpg"), key=lambda p: (p.stem.rsplit("_", 1)[-1], p.parent.name))
    first, held = files[:n], files[n:n + extra]
    folder = WORKDIR / "input"
    shutil.rmtree(folder, ignore_errors=True)
    link_input(folder, first)
    return folder, first, held


def run(folder: Path, name: str, args: argparse.Namespace, weights: Path,
        store: str = "features") -> dict:
    opts = localjob.JobOptions(input=str(folder), output=str(WORKDIR / "runs" / name),
                               weights=str(weights), input_size=args.input_size,
                               batch_size=args.batch_size, run_id=name,
                               features=str(WORKDIR / store))
    manifest = localjob.run_local(opts, cores=args.cores)
    t = manifest["timings_s"]
    s = manifest["store"]
    print(f"run {name}: {manifest['counts']['input']} images, {s['reused']} reused, "
          f"{s['featurized_now']} featurized now; featurize stage {t['featurize']:.1f} s "
          f"({s['timings_s']}), whole run {t['total'] - t['spark_session']:.1f} s; "
          f"stages {t}", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images in run 1")
    parser.add_argument("--new", type=float, default=0.10, help="new images for run 2, as a "
                        "fraction of run 1's")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    weights = REPO / demo_weights.DEFAULT_OUT
    if not weights.exists():
        demo_weights.build(weights)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    folder, first, held = prepare(args.images, args.new)
    print(f"run 1 on {len(first)} images, run 2 adds {len(held)}; {args.cores} cores, "
          f"input {args.input_size}, batch {args.batch_size} ({folder})", flush=True)
    start = time.perf_counter()
    if class_archive.plan(java_home()).writing is not None:
        # Else run 1 would start without the archive and pay for writing it, run 2 not.
        print(f"no JVM class archive yet: a first run on {PRIME_IMAGES} images writes it, "
              "so that both timed runs start alike", flush=True)
        link_input(WORKDIR / "prime", first[:PRIME_IMAGES])
        run(WORKDIR / "prime", "prime", args, weights, store="prime-features")
    one = run(folder, "1", args, weights)
    link_input(folder, held)
    two = run(folder, "2", args, weights)
    t1, t2 = one["timings_s"], two["timings_s"]
    print(f"featurize stage, run 2 / run 1 = {t2['featurize'] / t1['featurize']:.3f} "
          f"({t2['featurize']:.1f} s / {t1['featurize']:.1f} s)")
    whole1, whole2 = t1["total"] - t1["spark_session"], t2["total"] - t2["spark_session"]
    with1, with2 = (t["featurize"] + t.get("workers_ready", 0) for t in (t1, t2))
    print(f"featurize stage + workers_ready, run 2 / run 1 = {with2 / with1:.3f} "
          f"({with2:.1f} s / {with1:.1f} s)")
    print(f"whole run, run 2 / run 1 = {whole2 / whole1:.3f} ({whole2:.1f} s / {whole1:.1f} s)")
    print(f"({time.perf_counter() - start:.0f} s in all)")
    shutil.rmtree(WORKDIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
