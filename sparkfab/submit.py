"""`fab run-job` on a cluster: ship job/ to the master, spark-submit there, report.

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

from botocore.exceptions import BotoCoreError, ClientError
from paramiko.ssh_exception import SSHException

from sparkfab import ports, s3path, spark, weights
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory
from sparkfab.layout import LAYOUT, Layout
from sparkfab.s3path import S3Path
from sparkfab.sparklog import DriverLog, LineSplitter
from sparkfab.transfer import s3_error

JOB_DIR = Path(__file__).resolve().parent.parent / "job"
ENTRY = "featurize_pca.py"
APP_NAME = "sparkfab-featurize-pca"
MANIFEST = "manifest.json"
SUCCESS_MARKER = "_SUCCESS"
WEIGHTS_PREFIX = weights.PREFIX  # where a local --weights file is staged in the bucket
# run-job sets these itself; passing them through as job options would contradict it.
_RESERVED = ("--input", "--output", "--master")


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


def check_job_args(job_args: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    for arg in job_args:
        flag = arg.split("=", 1)[0]
        if flag in _RESERVED:
            raise UserError(
                f"{flag} is set by run-job itself, not passed through to the job",
                "give the input and output as run-job's own --input/--output",
            )
    return tuple(job_args)


def run_dir(run_id: str) -> str:
    return f"/tmp/sparkfab-run-{run_id}"


def as_service_user(ssh_user: str, layout: Layout = LAYOUT) -> str:
    """Prefix that runs a command as the Spark service user (it owns the secret)."""
    user = shlex.quote(layout.service_user)
    return f"runuser -u {user} -- " if ssh_user == "root" else f"sudo -n -u {user} -- "


def submit_argv(
    inv: Inventory, req: JobRequest, run: str, layout: Layout = LAYOUT
) -> list[str]:
    """spark-submit's command line on the master, for a job unpacked in `run`."""
    master_ip = inv.master.private_ip
    return [
        layout.spark_submit,
        "--master", spark.master_url(inv),
        "--deploy-mode", "client",
        "--name", APP_NAME,
        # The driver must be reachable by the executors on the private network.
        "--conf", f"spark.driver.host={master_ip}",
        "--conf", f"spark.driver.bindAddress={master_ip}",
        "--conf", f"spark.ui.port={ports.APP_UI}",
        "--conf", f"spark.pyspark.python={layout.python}",
        "--conf", f"spark.pyspark.driver.python={layout.python}",
        "--py-files", f"{run}/job.zip",
        f"{run}/{ENTRY}",
        "--input", req.input.s3a,
        "--output", req.output_uri,
        *req.job_args,
    ]


def prepare_command(inv: Inventory, staged_zip: str, run: str, layout: Layout = LAYOUT) -> str:
    """Move the uploaded zip into a run folder owned by the service user and unpack it."""
    sudo = "" if inv.ssh_user == "root" else "sudo -n "
    user = shlex.quote(layout.service_user)
    q = shlex.quote
    return " && ".join([
        f"{sudo}install -d -o {user} -g {user} -m 0750 {q(run)}",
        f"{sudo}install -o {user} -g {user} -m 0640 {q(staged_zip)} {q(run + '/job.zip')}",
        f"rm -f {q(staged_zip)}",
        f"{as_service_user(inv.ssh_user, layout)}{q(layout.python)} -m zipfile "
        f"-e {q(run + '/job.zip')} {q(run)}",
    ])


def remote_submit_command(
    inv: Inventory, req: JobRequest, run: str, layout: Layout = LAYOUT
) -> str:
    """The spark-submit, in its own session so that one `kill -- -PGID` stops the driver
    and its Python; the pid is kept in the run folder for `stop_command`."""
    argv = " ".join(shlex.quote(a) for a in submit_argv(inv, req, run, layout))
    # The service user's own home (runuser keeps root's): Keras and matplotlib cache there.
    home = f'HOME="$(getent passwd {shlex.quote(layout.service_user)} | cut -d: -f6)"'
    inner = f"cd {shlex.quote(run)} && export {home} && echo $$ > driver.pid && exec {argv}"
    return f"{as_service_user(inv.ssh_user, layout)}setsid -w sh -c {shlex.quote(inner)}"


def stop_command(inv: Inventory, run: str) -> str:
    sudo = "" if inv.ssh_user == "root" else "sudo -n "
    pidfile = shlex.quote(f"{run}/driver.pid")
    return f"{sudo}sh -c 'kill -TERM -- -$(cat {pidfile})' 2>/dev/null || true"


def cleanup_command(inv: Inventory, run: str) -> str:
    sudo = "" if inv.ssh_user == "root" else "sudo -n "
    return f"{sudo}rm -rf {shlex.quote(run)}"


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
        except (ClientError, BotoCoreError) as exc:
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
class RunResult:
    run_id: str
    exit_code: int
    manifest: dict[str, Any]
    driver: DriverLog
    log_path: Path
    seconds: float


def run_on_cluster(
    inv: Inventory,
    remote: Any,
    s3: Any,
    req: JobRequest,
    log_dir: Path,
    out: TextIO | None = None,
    verbose: bool = False,
) -> RunResult:
    """Check, ship, submit, stream, read the manifest. Raises UserError when the job failed.

    `remote` is a sparkfab.remote.Remote (its `connection(node)` is used for the streamed
    run); `s3` a boto3 S3 client for the cluster's region and endpoint.
    """
    out = out or sys.stdout
    start = time.monotonic()
    preflight(s3, inv, req)
    job_args = default_weights(s3, inv, req.job_args, out)
    req = JobRequest(req.input, req.output, stage_local_weights(s3, inv, job_args, out))
    run_id = new_run_id()
    run = run_dir(run_id)
    master = inv.master
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"run-{run_id}.log"

    def show(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    conn = remote.connection(master)
    staged = f"/tmp/sparkfab-job-{run_id}.zip"
    show(f"shipping job/ to {master.name} ({inv.address(master)}), run {run_id}")
    conn.put(io.BytesIO(package_job()), staged)
    prep = conn.run(prepare_command(inv, staged, run), hide=True, warn=True, in_stream=False)
    if not prep.ok:
        raise UserError(
            f"could not prepare the run folder on {master.name}: "
            f"{(prep.stderr or prep.stdout).strip().splitlines()[-1:] or ['?']}",
            "is the cluster installed? `fab provision` installs Spark and the service user",
        )
    driver = DriverLog(show=show, verbose=verbose)
    show(f"spark-submit on {master.name}: {req.input.s3a} -> {req.output_uri}")
    with log_path.open("w") as log:
        def tee(handler: Any) -> LineSplitter:
            def on_line(line: str) -> None:
                log.write(line + "\n")
                handler(line)
            return LineSplitter(on_line)

        stdout, stderr = tee(driver.stdout), tee(driver.stderr)
        try:
            result = conn.run(
                remote_submit_command(inv, req, run), hide=False, warn=True, pty=False,
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

    seconds = time.monotonic() - start
    if driver.executors:
        show(f"tasks finished per host: {driver.hosts_summary()}")
    if code != 0:
        raise UserError(
            f"the job failed on the cluster (exit {code}): {driver.failure_line()}",
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
    return RunResult(run_id, code, manifest, driver, log_path, seconds)


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
