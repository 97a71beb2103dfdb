"""`fab submit` and `fab run-job` on a cluster: ship a PySpark script to the master,
spark-submit it there, stream its progress, keep its log, pass its exit status on.

`fab submit APP.py` runs any script (`App`, `run_app`); `fab run-job` is one such script,
job/featurize_pca.py with job/ as its --py-files, plus the checks and the result that only
that job has (`run_on_cluster`).

The driver runs on the master (client mode) with the node's Python, the same environment
as the executors; it runs as the Spark service user, the only one that can read the RPC
secret in spark-defaults.conf. Input and output are s3a:// in the cluster's bucket (its
instance role allows no other). Checks that need no cluster run first, from here, with
boto3: the input has objects, the output is free and in the cluster's bucket. The job
commits its output at the end (outputs written under a temporary prefix, `_SUCCESS` last),
so a failed run leaves nothing that looks complete; this module only reads the result.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import shlex
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from paramiko.ssh_exception import SSHException

from sparkfab import pidgroup, ports, s3path, spark, weights
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory
from sparkfab.layout import LAYOUT, Layout
from sparkfab.remote import HOME_DIR, PRIVATE_DIR_COMMAND
from sparkfab.s3path import S3Path
from sparkfab.sparklog import DriverLog, LineSplitter
from sparkfab.transfer import s3_error

JOB_DIR = Path(__file__).resolve().parent.parent / "job"
ENTRY = "featurize_pca.py"
APP_NAME = "sparkfab-featurize-pca"
MANIFEST = "manifest.json"
SUCCESS_MARKER = "_SUCCESS"
BUNDLE = ".bundle.zip"  # the shipped files, in the run folder; no App file starts with "."
WEIGHTS_PREFIX = weights.PREFIX  # where a local --weights file is staged in the bucket
FEATURES_PREFIX = "features/"  # the feature store's default place in the cluster's bucket
# Job options naming S3 locations: given as s3:// or s3a://, they reach the job as s3a://.
_LOCATION_ARGS = ("--features", "--pca-from")
# run-job sets these itself; passing them through as job options would contradict it.
_RESERVED = ("--input", "--output", "--master")


@dataclass(frozen=True)
class App:
    """A PySpark script and what ships with it, as files: one bundle unpacked in the run
    folder on the master (the entry and the --py-files side by side)."""

    name: str  # the Spark application name (master UI, event log)
    entry: str  # the script's file name in the bundle
    files: tuple[tuple[str, bytes], ...]  # (name, content): the entry and the py-files
    py_files: tuple[str, ...] = ()  # names among `files` given to --py-files, in order
    args: tuple[str, ...] = ()  # the script's own arguments

    def __post_init__(self) -> None:
        names = [n for n, _ in self.files]
        for n in names:
            if n.startswith(".") or "/" in n or not n:
                raise UserError(f"{n!r}: not a plain file name",
                                "files are shipped flat into one run folder")
        if len(set(names)) != len(names):
            raise UserError(f"two files named the same in one submission: {sorted(names)}",
                            "rename one: they land side by side in one folder")
        if self.entry not in names or not set(self.py_files) <= set(names):
            raise ValueError("entry and py_files must be among the files")


# What --py-files accepts: Python files, zip archives of modules/packages, eggs.
PY_FILE_SUFFIXES = (".py", ".zip", ".egg")


def app_from_paths(script: Path, py_files: list[Path] | tuple[Path, ...] = (),
                   args: list[str] | tuple[str, ...] = (), name: str | None = None) -> App:
    """An App from files on this machine; one `error:` line for what spark-submit would
    only reject on the master."""
    if not script.is_file():
        raise UserError(f"{script}: no such file", "give the path of a PySpark script")
    if script.suffix != ".py":
        raise UserError(f"{script}: not a .py file",
                        "fab submit runs Python scripts; package code as --py-files")
    extra = []
    for path in py_files:
        if not path.is_file():
            raise UserError(f"--py-files {path}: no such file",
                            "give .py, .zip or .egg files, comma-separated")
        if path.suffix not in PY_FILE_SUFFIXES:
            raise UserError(f"--py-files {path}: not a .py, .zip or .egg",
                            "zip a package folder first (python -m zipfile -c x.zip pkg/)")
        extra.append((path.name, path.read_bytes()))
    return App(name or f"sparkfab-{script.stem}", script.name,
               ((script.name, script.read_bytes()), *extra),
               tuple(n for n, _ in extra), tuple(args))


def bundle(app: App) -> bytes:
    """The App's files in one zip, deterministic like package_job."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in app.files:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


@dataclass(frozen=True)
class JobRequest:
    input: S3Path
    output: S3Path
    job_args: tuple[str, ...] = ()  # passed through: --weights, --k/--variance, ...

    @property
    def output_uri(self) -> str:
        return self.output.s3a.rstrip("/")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def package_job(job_dir: Path = JOB_DIR) -> bytes:
    """job/*.py as a zip with the modules at its root (they import each other flatly):
    the executors get it through --py-files, the driver runs the entry from it unpacked.
    Deterministic: the same sources give the same bytes."""
    sources = sorted(p for p in job_dir.glob("*.py") if p.is_file())
    if not any(p.name == ENTRY for p in sources):
        raise UserError(f"{job_dir / ENTRY} not found", "run fab from the sparkfab checkout")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sources:
            info = zipfile.ZipInfo(path.name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def job_app(req: JobRequest, job_dir: Path = JOB_DIR) -> App:
    """run-job's submission: the entry beside job.zip, which holds every job module."""
    return App(APP_NAME, ENTRY,
               ((ENTRY, (job_dir / ENTRY).read_bytes()), ("job.zip", package_job(job_dir))),
               ("job.zip",),
               ("--input", req.input.s3a, "--output", req.output_uri, *req.job_args))


def check_job_args(job_args: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    for arg in job_args:
        flag = arg.split("=", 1)[0]
        if flag in _RESERVED:
            raise UserError(
                f"{flag} is set by run-job itself, not passed through to the job",
                "give the input and output as run-job's own --input/--output",
            )
    flags = {arg.split("=", 1)[0] for arg in job_args}
    # The job refuses this pair too (job/featurize_pca.py); here it fails before any SSH.
    if "--pca-from" in flags and flags & {"--k", "--variance"}:
        raise UserError("--pca-from takes k from the earlier run's basis: drop --k/--variance",
                        "the new rows are projected on that run's components")
    return tuple(job_args)


def run_dir(run_id: str, layout: Layout = LAYOUT) -> str:
    """The run's folder on the master: in the service user's own 0700 folder (never /tmp,
    where another user could plant a file or link first), made by that user."""
    return f"{layout.runs_dir}/{run_id}"


def staged_zip(run_id: str) -> str:
    """Where the job's zip is uploaded: the SSH user's private ~/.sparkfab (0700)."""
    return f"{HOME_DIR}/job-{run_id}.zip"


def as_service_user(ssh_user: str, layout: Layout = LAYOUT) -> str:
    """Prefix that runs a command as the Spark service user (it owns the secret)."""
    user = shlex.quote(layout.service_user)
    return f"runuser -u {user} -- " if ssh_user == "root" else f"sudo -n -u {user} -- "


def driver_confs(inv: Inventory, layout: Layout = LAYOUT) -> list[str]:
    """The settings a driver on the master needs beyond spark-defaults.conf, as key=value:
    one place for spark-submit and for the notebook's kernel."""
    master_ip = inv.master.private_ip
    return [
        # The driver must be reachable by the executors on the private network.
        f"spark.driver.host={master_ip}",
        f"spark.driver.bindAddress={master_ip}",
        f"spark.ui.port={ports.APP_UI}",
        f"spark.pyspark.python={layout.python}",
        f"spark.pyspark.driver.python={layout.python}",
    ]


def app_argv(inv: Inventory, app: App, run: str, layout: Layout = LAYOUT) -> list[str]:
    """spark-submit's command line on the master, for an App unpacked in `run`."""
    argv = [layout.spark_submit, "--master", spark.master_url(inv), "--deploy-mode", "client",
            "--name", app.name]
    for conf in driver_confs(inv, layout):
        argv += ["--conf", conf]
    if app.py_files:
        argv += ["--py-files", ",".join(f"{run}/{n}" for n in app.py_files)]
    return [*argv, f"{run}/{app.entry}", *app.args]


def submit_argv(
    inv: Inventory, req: JobRequest, run: str, layout: Layout = LAYOUT
) -> list[str]:
    """run-job's spark-submit command line on the master, for the job unpacked in `run`."""
    return app_argv(inv, job_app(req), run, layout)


def prepare_command(inv: Inventory, staged_zip: str, run: str, layout: Layout = LAYOUT) -> str:
    """The service user makes a new run folder (mkdir fails if it exists) in its private
    runs folder and writes the uploaded zip there from stdin: root never writes into a
    folder that user controls. Then the zip is unpacked."""
    q = shlex.quote
    spark = as_service_user(inv.ssh_user, layout)
    return " && ".join([
        f"{spark}mkdir -p -m 0700 {q(layout.runs_dir)}",
        f"{spark}chmod 0700 {q(layout.runs_dir)}",
        f"{spark}mkdir -m 0700 {q(run)}",
        f"{spark}sh -c 'cat >\"$1\"' _ {q(run + '/' + BUNDLE)} <{q(staged_zip)}",
        f"rm -f {q(staged_zip)}",
        f"{spark}{q(layout.python)} -m zipfile -e {q(run + '/' + BUNDLE)} {q(run)}",
    ])


def remote_submit_command(inv: Inventory, app: App, run: str, layout: Layout = LAYOUT) -> str:
    """The spark-submit, in its own session so that one `kill -TERM -PGID` stops the driver
    and its Python; the pid is kept in the run folder for `stop_command`."""
    argv = " ".join(shlex.quote(a) for a in app_argv(inv, app, run, layout))
    # The service user's own home (runuser keeps root's): Keras and matplotlib cache there.
    home = f'HOME="$(getent passwd {shlex.quote(layout.service_user)} | cut -d: -f6)"'
    inner = f"cd {shlex.quote(run)} && export {home} && echo $$ > driver.pid && exec {argv}"
    return f"{as_service_user(inv.ssh_user, layout)}setsid -w sh -c {shlex.quote(inner)}"


def stop_command(inv: Inventory, run: str, layout: Layout = LAYOUT) -> str:
    return pidgroup.stop_command(as_service_user(inv.ssh_user, layout), f"{run}/driver.pid")


def cleanup_command(inv: Inventory, run: str, layout: Layout = LAYOUT) -> str:
    return f"{as_service_user(inv.ssh_user, layout)}rm -rf {shlex.quote(run)}"


# ---- checks from the operator's machine, before any SSH ---------------------------------


def preflight(s3: Any, inv: Inventory, req: JobRequest) -> None:
    """Fail in a second, with one clear line, on what would fail minutes into the job."""
    for what, loc in (("input", req.input), ("output", req.output)):
        if inv.bucket and loc.bucket != inv.bucket:
            raise UserError(
                f"--{what} {loc.s3} is outside the cluster's bucket s3://{inv.bucket}/: "
                "the nodes' role may only use that bucket",
                f"copy the data there (`fab upload-data DIR s3://{inv.bucket}/PREFIX`) "
                "and use it for input and output",
            )
    if not req.output.prefix:
        raise UserError(
            f"--output {req.output.s3} is a whole bucket",
            f"give a folder for this run, e.g. s3://{req.output.bucket}/runs/NAME",
        )
    try:
        found = s3.list_objects_v2(
            Bucket=req.input.bucket, Prefix=req.input.prefix, MaxKeys=1
        ).get("KeyCount", 0)
        taken = s3.list_objects_v2(
            Bucket=req.output.bucket, Prefix=req.output.prefix, MaxKeys=1
        ).get("KeyCount", 0)
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, req.input.bucket, "check the input and output") from exc
    if not found:
        raise UserError(
            f"input {req.input.s3} is empty or does not exist",
            "upload images first: fab upload-data LOCAL_DIR " + req.input.s3,
        )
    if taken:
        raise UserError(
            f"output {req.output.s3} already holds objects; a run never overwrites one",
            "choose a new --output folder (or delete the old run)",
        )


def default_weights(
    s3: Any, inv: Inventory, job_args: tuple[str, ...], out: TextIO
) -> tuple[str, ...]:
    """No `--weights` given: the copy `fab stage` put in the cluster's bucket. The driver
    never downloads weights at run time (a VPC without egress, or the local cloud)."""
    if any(a == "--weights" or a.startswith("--weights=") for a in job_args):
        return job_args
    try:
        staged = weights.staged_default(s3, inv.bucket) if inv.bucket else None
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, inv.bucket, "read the staged weights") from exc
    if staged is None:
        raise UserError(
            f"no --weights given and none staged in s3://{inv.bucket}/{weights.PREFIX}",
            "run `fab stage` (it stages the weights too: --weights imagenet|demo|FILE), "
            "or give --weights FILE",
        )
    url = staged.s3a(inv.bucket)
    out.write(f"weights: {url} (staged {staged.source}, sha256 {staged.sha256[:16]})\n")
    return (*job_args, "--weights", url)


def storage_args(inv: Inventory, job_args: tuple[str, ...]) -> tuple[str, ...]:
    """--features and --pca-from as s3a:// URLs in the cluster's bucket (the only one its
    role may use); the feature store defaults to s3a://<bucket>/features."""
    args = list(job_args)
    seen = set()
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag not in _LOCATION_ARGS:
            continue
        index = i if eq else i + 1
        if index >= len(args):
            raise UserError(f"{flag} needs a value", "give it as s3://BUCKET/PREFIX")
        value = args[index] if not eq else value
        loc = s3path.parse(value, flag)
        if inv.bucket and loc.bucket != inv.bucket:
            raise UserError(f"{flag} {loc.s3} is outside the cluster's bucket "
                            f"s3://{inv.bucket}/: the nodes' role may only use that bucket",
                            f"use a location under s3://{inv.bucket}/")
        url = loc.s3a.rstrip("/")
        args[index] = f"{flag}={url}" if eq else url
        seen.add(flag)
    if "--features" not in seen and inv.bucket:
        args += ["--features", f"s3a://{inv.bucket}/{FEATURES_PREFIX}".rstrip("/")]
    return tuple(args)


def stage_local_weights(
    s3: Any, inv: Inventory, job_args: tuple[str, ...], out: TextIO
) -> tuple[str, ...]:
    """A `--weights` that is a file here is uploaded once to the bucket and replaced by its
    s3a:// URL: the driver reads it from there and broadcasts it to the executors."""
    args = list(job_args)
    for i, arg in enumerate(args):
        if arg == "--weights" and i + 1 < len(args):
            index, value = i + 1, args[i + 1]
        elif arg.startswith("--weights="):
            index, value = i, arg.split("=", 1)[1]
        else:
            continue
        local = Path(value).expanduser()
        if value in ("imagenet", "random") or value.startswith(s3path.SCHEMES):
            continue
        if not local.is_file():
            raise UserError(
                f"--weights {value!r}: no such file here, and not imagenet, random or s3a://",
                "give a .weights.h5 / .keras file, an s3a:// URL, imagenet or random",
            )
        if not inv.bucket:
            raise UserError("the inventory records no bucket to stage the weights in",
                            "upload them yourself and pass --weights s3a://...")
        key = WEIGHTS_PREFIX + local.name
        size = local.stat().st_size
        try:
            try:
                there = s3.head_object(Bucket=inv.bucket, Key=key)["ContentLength"]
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchKey"):
                    raise
                there = None
            if there != size:
                out.write(f"staging weights {local} ({size / 1e6:.1f} MB) in s3://{inv.bucket}/"
                          f"{key}\n")
                s3.upload_file(str(local), inv.bucket, key)
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise s3_error(exc, inv.bucket, "stage the weights") from exc
        url = f"s3a://{inv.bucket}/{key}"
        args[index] = url if index == i + 1 else f"--weights={url}"
    return tuple(args)


# ---- the result -------------------------------------------------------------------------


def read_manifest(s3: Any, output: S3Path) -> dict[str, Any] | None:
    """The committed run's manifest, or None when the run did not commit (no _SUCCESS)."""
    try:
        s3.head_object(Bucket=output.bucket, Key=output.key(SUCCESS_MARKER))
        body = s3.get_object(Bucket=output.bucket, Key=output.key(MANIFEST))["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
            return None
        raise s3_error(exc, output.bucket, f"read {output.s3}{MANIFEST}") from exc
    except BotoCoreError as exc:
        raise s3_error(exc, output.bucket, f"read {output.s3}{MANIFEST}") from exc
    return json.loads(body)


def summarize(manifest: dict[str, Any], output: S3Path) -> str:
    """The lines run-job prints at the end: counts, k, variance, where the outputs are."""
    counts = manifest["counts"]
    n_in, ok, failed = int(counts["input"]), int(counts["ok"]), int(counts["failed"])
    pca = manifest["pca"]
    k = int(pca["k"])
    cumulative = [float(v) for v in pca["cumulative_explained_variance"]]
    lines = [
        f"images: {n_in} input = {ok} featurized + {failed} failed"
        + ("" if n_in == ok + failed else "  (MISMATCH: some input is unaccounted for)"),
        f"PCA: k = {k}, explained variance {cumulative[-1]:.3f}"
        + (f" (target {pca['variance_target']})" if pca.get("variance_target") else ""),
        f"outputs: {output.s3}"
        + (f" ({', '.join(manifest['files'])})" if manifest.get("files") else ""),
    ]
    skipped = counts.get("skipped")
    if skipped:
        lines[0] += f"; {skipped} non-image files skipped"
    if manifest.get("store"):
        from sparkfab.localjob import basis_note, store_line

        lines.insert(1, store_line(manifest["store"]))
        lines[2] += basis_note(pca)
    return "\n".join(lines)


def check_manifest(manifest: dict[str, Any]) -> str | None:
    """Why the manifest's counts cannot be trusted, or None."""
    counts = manifest.get("counts", {})
    try:
        n_in, ok, failed = int(counts["input"]), int(counts["ok"]), int(counts["failed"])
    except (KeyError, TypeError, ValueError):
        return "the manifest has no input/ok/failed counts"
    if n_in != ok + failed:
        return f"the manifest says input {n_in} != ok {ok} + failed {failed}"
    return None


# ---- the run ----------------------------------------------------------------------------


@dataclass
class Submitted:
    """What one spark-submit on the master gave: its exit status and what it printed."""
    run_id: str
    exit_code: int
    driver: DriverLog
    log_path: Path
    seconds: float


@dataclass
class RunResult:
    run_id: str
    exit_code: int
    manifest: dict[str, Any]
    driver: DriverLog
    log_path: Path
    seconds: float


def run_app(
    inv: Inventory,
    remote: Any,
    app: App,
    log_dir: Path,
    out: TextIO | None = None,
    verbose: bool = False,
) -> Submitted:
    """Ship, submit, stream: the driver's exit status comes back, never raised on.

    Raises UserError only when the run could not be made or followed (no run folder, a
    dropped connection). `remote` is a sparkfab.remote.Remote (its `connection(node)` is
    used for the streamed run).
    """
    out = out or sys.stdout
    start = time.monotonic()
    run_id = new_run_id()
    run = run_dir(run_id)
    master = inv.master
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"run-{run_id}.log"

    def show(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    conn = remote.connection(master)
    staged = staged_zip(run_id)
    show(f"shipping {app.entry} to {master.name} ({inv.address(master)}), run {run_id}")
    conn.run(PRIVATE_DIR_COMMAND.format(dir=HOME_DIR), hide=True, in_stream=False)
    conn.put(io.BytesIO(bundle(app)), staged)
    prep = conn.run(prepare_command(inv, staged, run), hide=True, warn=True, in_stream=False)
    if not prep.ok:
        raise UserError(
            f"could not prepare the run folder on {master.name}: "
            f"{(prep.stderr or prep.stdout).strip().splitlines()[-1:] or ['?']}",
            "is the cluster installed? `fab provision` installs Spark and the service user",
        )
    driver = DriverLog(show=show, verbose=verbose)
    with log_path.open("w") as log:
        def tee(handler: Any) -> LineSplitter:
            def on_line(line: str) -> None:
                log.write(line + "\n")
                handler(line)
            return LineSplitter(on_line)

        stdout, stderr = tee(driver.stdout), tee(driver.stderr)
        try:
            result = conn.run(
                remote_submit_command(inv, app, run), hide=False, warn=True, pty=False,
                in_stream=False, out_stream=stdout, err_stream=stderr,
            )
            code = int(result.exited)
        except KeyboardInterrupt:
            show("interrupted: stopping the driver on the master")
            conn.run(stop_command(inv, run), hide=True, warn=True, in_stream=False)
            raise
        except (OSError, EOFError, SSHException) as exc:
            raise UserError(
                f"lost the SSH connection to {master.name} during the run: {exc}",
                f"the job may still be running there: `fab ui` shows it; partial driver "
                f"log in {log_path}",
            ) from None
        finally:
            stdout.close()
            stderr.close()
            with contextlib.suppress(OSError, EOFError, SSHException):
                conn.run(cleanup_command(inv, run), hide=True, warn=True, in_stream=False)

    if driver.executors:
        show(f"tasks finished per host: {driver.hosts_summary()}")
    return Submitted(run_id, code, driver, log_path, time.monotonic() - start)


def run_on_cluster(
    inv: Inventory,
    remote: Any,
    s3: Any,
    req: JobRequest,
    log_dir: Path,
    out: TextIO | None = None,
    verbose: bool = False,
) -> RunResult:
    """run-job: check, then `run_app` the job, then read the manifest. Raises UserError
    when the job failed. `s3` is a boto3 S3 client for the cluster's region and endpoint."""
    out = out or sys.stdout
    preflight(s3, inv, req)
    job_args = default_weights(s3, inv, storage_args(inv, req.job_args), out)
    req = JobRequest(req.input, req.output, stage_local_weights(s3, inv, job_args, out))
    out.write(f"spark-submit on {inv.master.name}: {req.input.s3a} -> {req.output_uri}\n")
    done = run_app(inv, remote, job_app(req), log_dir, out=out, verbose=verbose)
    log_path, code = done.log_path, done.exit_code
    if code != 0:
        raise UserError(
            f"the job failed on the cluster (exit {code}): {done.driver.failure_line()}",
            f"the driver's full log is in {log_path}; `fab logs` fetches the executors' logs",
        )
    manifest = read_manifest(s3, req.output)
    if manifest is None:
        raise UserError(
            f"the job exited 0 but {req.output.s3} has no committed run "
            f"({SUCCESS_MARKER} or {MANIFEST} missing)",
            f"see the driver's log in {log_path}",
        )
    problem = check_manifest(manifest)
    if problem:
        raise UserError(f"the run at {req.output.s3} is inconsistent: {problem}",
                        f"see the driver's log in {log_path}")
    return RunResult(done.run_id, code, manifest, done.driver, log_path, done.seconds)


def submit_script(
    settings: Any,
    script: str,
    py_files: list[str] | tuple[str, ...] = (),
    args: list[str] | tuple[str, ...] = (),
    name: str | None = None,
    verbose: bool = False,
    out: TextIO | None = None,
) -> Submitted:
    """The cluster half of `fab submit`: any PySpark script, its exit status returned."""
    from sparkfab import cluster

    out = out or sys.stdout
    inv = cluster.require(settings)
    app = app_from_paths(Path(script).expanduser(),
                         [Path(p).expanduser() for p in py_files], args, name)
    with cluster.remote(inv, out=lambda line: print(line, file=out, flush=True)) as remote:
        done = run_app(inv, remote, app, Path("logs") / inv.cluster / "runs", out=out,
                       verbose=verbose)
    status = "finished" if done.exit_code == 0 else f"FAILED (exit {done.exit_code})"
    out.write(f"{app.entry} {status} in {done.seconds:.0f} s; driver log: {done.log_path}\n")
    if done.exit_code != 0:
        out.write(f"last error: {done.driver.failure_line()}\n")
    out.flush()
    return done


def run_job(
    settings: Any,
    input_url: str,
    output_url: str,
    job_args: list[str] | tuple[str, ...] = (),
    verbose: bool = False,
    out: TextIO | None = None,
) -> RunResult:
    """The cluster half of `fab run-job`: everything from the settings to the summary."""
    from sparkfab import cluster

    out = out or sys.stdout
    inv = cluster.require(settings)
    req = JobRequest(
        s3path.parse(input_url, "--input"),
        s3path.parse(output_url, "--output"),
        check_job_args(job_args),
    )
    s3 = cluster.s3_client(settings, inv)
    with cluster.remote(inv, out=lambda line: print(line, file=out, flush=True)) as remote:
        result = run_on_cluster(inv, remote, s3, req, Path("logs") / inv.cluster / "runs",
                                out=out, verbose=verbose)
    out.write(summarize(result.manifest, req.output) + "\n")
    out.write(f"driver log: {result.log_path}; {result.seconds:.0f} s in all\n")
    out.flush()
    return result
