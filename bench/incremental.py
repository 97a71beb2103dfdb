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
Each round is a pair of runs on a store of its own; with several rounds (`--rounds`,
default 3) it prints every round's ratios and their medians: this shared 2-core machine
moves by about 15% from one minute to the next, and run 1 carries the ratio's noise.

    .venv/bin/python bench/incremental.py --images 2000
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sparkfab import class_archive, demo_weights, localjob, samples  # noqa: E402
from sparkfab.java import java_home  # noqa: E402

WORKDIR = REPO / ".cache" / "bench" / "incremental"  # the default --workdir
MARKER = ".sparkfab-bench"  # in a --workdir this benchmark made, and may empty again
PRIME_IMAGES = 100


def claim(workdir: Path) -> None:
    """An empty `workdir` for this run: a new folder, or one this benchmark made."""
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise SystemExit(f"error: --workdir {workdir} holds files this benchmark did not "
                         "make; name a new or empty folder")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / MARKER).touch()


def link_input(folder: Path, files: list[Path]) -> None:
    """`files` into `folder`/<class>/, as hard links (a copy on another filesystem): the
    same bytes and modification times in every round."""
    for f in files:
        (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, folder / f.parent.name / f.name)
        except OSError:
            shutil.copy2(f, folder / f.parent.name / f.name)


def prepare(n: int, new_fraction: float) -> tuple[list[Path], list[Path]]:
    """Generated samples: the first n (by name) for run 1, the next ones held back."""
    extra = math.ceil(n * new_fraction)
    per_class = math.ceil((n + extra) / len(samples.CLASSES))
    pool = REPO / ".cache" / "bench" / f"images-{per_class}"
    samples.generate(pool, per_class)
    files = sorted(pool.rglob("*.jpg"), key=lambda p: (p.stem.rsplit("_", 1)[-1], p.parent.name))
    return files[:n], files[n:n + extra]


def run(folder: Path, name: str, args: argparse.Namespace, weights: Path,
        store: str = "features") -> dict:
    opts = localjob.JobOptions(input=str(folder), output=str(args.workdir / "runs" / name),
                               weights=str(weights), input_size=args.input_size,
                               batch_size=args.batch_size, run_id=name,
                               features=str(args.workdir / store))
    manifest = localjob.run_local(opts, cores=args.cores)
    t = manifest["timings_s"]
    s = manifest["store"]
    print(f"run {name}: {manifest['counts']['input']} images, {s['reused']} reused, "
          f"{s['featurized_now']} featurized now; featurize stage {t['featurize']:.1f} s "
          f"({s['timings_s']}), whole run {t['total'] - t['spark_session']:.1f} s; "
          f"stages {t}", flush=True)
    return manifest


RATIOS = ("featurize stage", "featurize stage + workers_ready", "whole run")


def ratios(one: dict, two: dict) -> dict[str, tuple[float, float]]:
    """Run 2's and run 1's seconds for each of RATIOS."""
    t1, t2 = one["timings_s"], two["timings_s"]
    return {
        RATIOS[0]: (t2["featurize"], t1["featurize"]),
        RATIOS[1]: (t2["featurize"] + t2.get("workers_ready", 0),
                    t1["featurize"] + t1.get("workers_ready", 0)),
        RATIOS[2]: (t2["total"] - t2["spark_session"], t1["total"] - t1["spark_session"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--images", type=int, default=2000, help="images in run 1")
    parser.add_argument("--new", type=float, default=0.10, help="new images for run 2, as a "
                        "fraction of run 1's")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs, each on a "
                        "store of its own; the ratios' medians are printed last")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="where the input, "
                        "the stores and the runs go: a new folder, or one this benchmark "
                        "made (emptied first, removed at the end)")
    args = parser.parse_args(argv)
    if args.images < 2 or args.rounds < 1 or not 0 < args.new <= 1:
        parser.error("--images must be at least 2, --rounds at least 1, --new in (0, 1]")

    weights = REPO / demo_weights.DEFAULT_OUT
    if not weights.exists():
        demo_weights.build(weights)
    claim(args.workdir)
    first, held = prepare(args.images, args.new)
    folder = args.workdir / "input"
    print(f"run 1 on {len(first)} images, run 2 adds {len(held)}; {args.cores} cores, "
          f"input {args.input_size}, batch {args.batch_size}, {args.rounds} round(s) "
          f"({folder})", flush=True)
    start = time.perf_counter()
    if class_archive.plan(java_home()).writing is not None:
        # Else run 1 would start without the archive and pay for writing it, run 2 not.
        print(f"no JVM class archive yet: a first run on {PRIME_IMAGES} images writes it, "
              "so that both timed runs start alike", flush=True)
        link_input(args.workdir / "prime", first[:PRIME_IMAGES])
        run(args.workdir / "prime", "prime", args, weights, store="prime-features")
    rounds: list[dict[str, tuple[float, float]]] = []
    for r in range(1, args.rounds + 1):
        # The input as run 1 finds it, and an empty store of the round's own.
        shutil.rmtree(folder, ignore_errors=True)
        link_input(folder, first)
        store = f"features-{r}"
        one = run(folder, f"{r}-1", args, weights, store=store)
        link_input(folder, held)
        two = run(folder, f"{r}-2", args, weights, store=store)
        rounds.append(ratios(one, two))
        print(f"round {r}: " + "; ".join(
            f"{name}, run 2 / run 1 = {b / a:.3f} ({b:.1f} s / {a:.1f} s)"
            for name, (b, a) in rounds[-1].items()), flush=True)
    for name in RATIOS:
        each = [b / a for b, a in (found[name] for found in rounds)]
        print(f"{name}, run 2 / run 1 = {statistics.median(each):.3f}"
              + (f" (median of {', '.join(f'{x:.3f}' for x in each)})"
                 if len(each) > 1 else ""))
    print(f"({time.perf_counter() - start:.0f} s in all)")
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
