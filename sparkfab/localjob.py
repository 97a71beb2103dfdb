"""Run job/featurize_pca.py in Spark local mode with this venv's pyspark, and summarise it.

The same entry point the cluster runs: only the master (local[N]) and the paths differ.
`JobOptions.to_args()` gives the job's command-line flags for any spark-submit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sparkfab import class_archive, demo_weights, samples
from sparkfab.errors import UserError
from sparkfab.java import java_home, spark_env
from sparkfab.quiet import NOISE

REPO_ROOT = Path(__file__).resolve().parent.parent
JOB_DIR = REPO_ROOT / "job"
JOB_ENTRY = JOB_DIR / "featurize_pca.py"
DEFAULT_OUTPUT_ROOT = Path("output")
LOG4J_CONF = Path(__file__).resolve().parent / "log4j2-local.properties"
DEFAULT_FEATURES = Path(".cache/features")  # the job's own default for a local --output
JOB_USAGE_EXIT = 2  # featurize_pca.py: bad input or settings, said in one `error:` line


@dataclass
class JobOptions:
    """The job's settings; None means the job's own default."""

    input: str
    output: str
    weights: str
    engine: str | None = None
    k: int | None = None
    variance: float | None = None
    input_size: int | None = None
    batch_size: int | None = None
    tf_threads: int | None = None
    images_per_partition: int | None = None
    run_id: str | None = None
    features: str | None = None  # the feature store; None: the job's default
    refeaturize: bool = False
    pca_from: str | None = None
    extra: list[str] = field(default_factory=list)

    def to_args(self) -> list[str]:
        args = ["--input", self.input, "--output", self.output, "--weights", self.weights]
        for flag, value in (
            ("--engine", self.engine), ("--k", self.k), ("--variance", self.variance),
            ("--input-size", self.input_size),
            ("--batch-size", self.batch_size), ("--tf-threads", self.tf_threads),
            ("--images-per-partition", self.images_per_partition), ("--run-id", self.run_id),
            ("--features", self.features), ("--pca-from", self.pca_from),
        ):
            if value is not None:
                args += [flag, str(value)]
        if self.refeaturize:
            args.append("--refeaturize")
        return args + list(self.extra)


def new_run_id() -> str:
    """UTC timestamp + 4 hex digits: sortable, and two runs in one second do not collide."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def spark_submit() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


# Local mode on an operator's machine: nothing listens beyond loopback, no UI port at all.
LOCAL_SPARK_CONF = {
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.log.level": "WARN",
    # Only the JIT's quick tier: its optimising compiler took a core from the Python
    # workers' inference for most of a short run (bench/incremental.py: run 1's featurize
    # stage 14.4 s with this, 18-20 s without, on 2 cores).
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
}


def conf_args(conf: dict[str, str]) -> list[str]:
    """spark-submit's `--conf key=value` arguments."""
    return [arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")]


def local_command(opts: JobOptions, cores: int | None = None, driver_memory: str = "2g",
                  extra_conf: dict[str, str] | None = None, java_options: str = "") -> list[str]:
    """spark-submit's command line; `java_options` are added to the driver JVM's own."""
    master = f"local[{cores}]" if cores else "local[*]"
    driver_java = LOCAL_SPARK_CONF["spark.driver.extraJavaOptions"]
    conf = {
        **LOCAL_SPARK_CONF,
        "spark.driver.extraJavaOptions": f"{driver_java} {java_options}".strip(),
        # The model is kept per Python worker across tasks: workers must be reused.
        "spark.python.worker.reuse": "true",
        **(extra_conf or {}),
    }
    return [str(spark_submit()), "--master", master, "--driver-memory", driver_memory,
            *conf_args(conf), str(JOB_ENTRY), *opts.to_args()]


def local_env() -> dict[str, str]:
    env = spark_env()
    # Driver and executors must be the same Python, with pyspark, TF and Pillow: this one.
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Spark binds to 127.0.0.1 (LOCAL_SPARK_CONF); saying so here also silences its
    # "hostname resolves to a loopback address" warning, printed before any conf applies.
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Spark's own INFO lines before the SparkContext applies spark.log.level: warnings only.
    env.setdefault("SPARK_SUBMIT_OPTS", f"-Dlog4j2.configurationFile={LOG4J_CONF.as_uri()}")
    return env


def submit_main(argv: list[str] | None = None) -> int:
    """`.venv/bin/sparkfab-submit`: pyspark's spark-submit with this venv's Python and Java.

    pyspark's own launcher, run without an activated venv, finds Spark and runs the driver
    with the system `python3`, which has neither pyspark nor TensorFlow. This wrapper sets
    JAVA_HOME and PYSPARK_PYTHON, and, with no `--master`, local mode on loopback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if java_home() is None:
        print("error: Spark needs Java 17 or 21 and none was found\n"
              "hint: run `make setup` (it installs one into .venv) or set JAVA_HOME",
              file=sys.stderr)
        return 1
    defaults: list[str] = []
    if "--master" not in args and not any(a.startswith("--master=") for a in args):
        defaults = ["--master", "local[*]", *conf_args(LOCAL_SPARK_CONF)]
    env = local_env()
    os.execve(str(spark_submit()), [str(spark_submit()), *defaults, *args], env)
    return 0  # not reached


def _pump(src: IO[str], dst: IO[str], errors: list[str], last: list[str]) -> None:
    """Echo a stream of the job; keep its `error:` lines for the UserError instead.

    spark-submit sends the Python driver's stderr to its own stdout, so both streams
    are pumped the same way.
    """
    for line in src:
        if NOISE.match(line):
            continue
        if line.startswith("error: "):
            errors.append(line[len("error: "):].strip())
            continue
        if line.startswith("{"):  # the driver's closing line: its manifest as JSON
            last[:] = [line.strip()]
            continue
        dst.write(line)
        dst.flush()


def run_local(opts: JobOptions, cores: int | None = None,
              extra_conf: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the job in local mode; returns its manifest. UserError when it fails."""
    home = java_home()
    if home is None:
        raise UserError("Spark needs Java 17 or 21 and none was found",
                        "run `make setup` (it installs one into .venv) or set JAVA_HOME")
    archive = class_archive.plan(home)
    if archive.writing is not None:
        print(f"jvm: this run writes the driver's class archive {archive.final} as it ends "
              "(once; later local runs start seconds sooner)", flush=True)
    cmd = local_command(opts, cores, extra_conf=extra_conf, java_options=archive.java_options)
    rc = None
    try:
        rc, errors, last_out = _run_pumped(cmd)
    finally:
        class_archive.finish(archive, succeeded=rc == 0, maps=jvm_maps_archive)
    if rc == JOB_USAGE_EXIT and errors:
        raise UserError(errors[-1], "fix the input or flag named above (`fab run-job --help`)")
    if rc != 0:
        raise UserError(f"the featurize + PCA job failed (exit status {rc})",
                        "see the Spark/Python log above for the cause")
    if "://" in opts.output and not opts.output.startswith("file:"):
        return json.loads(last_out[0])
    return json.loads((Path(opts.output) / "manifest.json").read_text())


def jvm_maps_archive(archive: Path) -> bool:
    """Whether spark-submit's own JVM starts with `archive` mapped: -Xshare:on refuses to
    start on one it cannot use (another class path, a broken header). A JVM that dies on
    it writes its crash report into a folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="sparkfab-jvm-") as scratch:
        options = (f"-Xshare:on -XX:SharedArchiveFile={archive} "
                   f"-XX:ErrorFile={scratch}/hs_err_%p.log")
        try:
            done = subprocess.run(
                [str(spark_submit()), "--conf", f"spark.driver.extraJavaOptions={options}",
                 "--version"], env=local_env(), capture_output=True, text=True,
                timeout=120, cwd=scratch)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


def _run_pumped(cmd: list[str]) -> tuple[int, list[str], list[str]]:
    """Run the job, echoing its output: (exit status, its `error:` lines, its last JSON)."""
    proc = subprocess.Popen(cmd, env=local_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    errors: list[str] = []
    last_out: list[str] = []
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, sys.stdout, errors, last_out)),
        threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, errors, [])),
    ]
    for pump in pumps:
        pump.start()
    rc = proc.wait()
    for pump in pumps:
        pump.join()
    return rc, errors, last_out


def default_options(
    input: str | None = None, output: str | None = None, weights: str | None = None,
    samples_per_class: int = samples.DEFAULT_PER_CLASS,
) -> JobOptions:
    """Options for a local run: generated samples, output/<run id>, the demo weights."""
    run_id = new_run_id()
    if input is None:
        n = samples.generate(samples.DEFAULT_DIR, samples_per_class)
        print(f"input: {n} generated sample images under {samples.DEFAULT_DIR}/", flush=True)
        input = str(samples.DEFAULT_DIR)
    if weights is None:
        weights = str(demo_weights.DEFAULT_OUT)
        if not demo_weights.DEFAULT_OUT.exists():
            demo_weights.build(demo_weights.DEFAULT_OUT)
    return JobOptions(
        input=_absolute(input), output=_absolute(output or str(DEFAULT_OUTPUT_ROOT / run_id)),
        weights=weights if weights in ("imagenet", "random") else _absolute(weights),
        run_id=run_id, features=_absolute(str(DEFAULT_FEATURES)),
    )


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def summary(manifest: dict[str, Any]) -> str:
    c = manifest["counts"]
    p = manifest["pca"]
    t = manifest["timings_s"]
    store = manifest.get("store") or {}
    now = store.get("featurized_now", c["input"])
    rate = now / t["featurize"] if t.get("featurize") and now else 0.0
    lines = [
        f"images: {c['input']} read, {c['ok']} ok, {c['failed']} failed"
        f" (listed in errors.csv), {c['skipped']} other files skipped",
        *([store_line(store)] if store else []),
        f"PCA: k = {p['k']}, explaining {p['cumulative_explained_variance'][-1]:.1%} of the"
        f" variance (PC1 {p['explained_variance'][0]:.1%}, PC2 {p['explained_variance'][1]:.1%})"
        + basis_note(p),
        f"time: {t['total']:.1f} s in Spark (featurize {t['featurize']:.1f} s,"
        f" {rate:.0f} img/s; pca {t['pca']:.1f} s; write {t['write']:.1f} s)",
        f"outputs: {manifest['output']}/  ({', '.join(manifest['files'])})",
    ]
    return "\n".join(lines)


def store_line(store: dict[str, Any]) -> str:
    """The feature store's part of a run's summary (local and cluster runs print it)."""
    size = store.get("size") or {}
    return (f"feature store: {store['reused']} reused, {store['featurized_now']} featurized now,"
            f" {store['failed']} failed ({store.get('failed_reused', 0)} known bad, not"
            f" retried); it holds {size.get('images', '?')} images in"
            f" {size.get('batches', '?')} batches, {size.get('bytes', 0) / 1e6:.1f} MB"
            f" ({store['path']}, {store['fingerprint']})")


def basis_note(pca: dict[str, Any]) -> str:
    basis = pca.get("basis") or {}
    if basis.get("source") == "pca_from":
        return f"; projected on the basis of {basis['run']} (not refitted)"
    return ""
