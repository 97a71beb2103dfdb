"""run-job on a cluster, without the cluster: the command lines, the checks made from the
operator's machine (moto S3), Spark's output turned into progress, and the summary."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import subprocess
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from sparkfab import s3path, submit, weights
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node
from sparkfab.sparklog import DriverLog, LineSplitter

REGION = "eu-west-3"
BUCKET = "sparkfab-demo-data"


def inventory(ssh_user: str = "ubuntu") -> Inventory:
    return Inventory(
        cluster="demo", region=REGION, ssh_user=ssh_user, bucket=BUCKET,
        nodes=[
            Node(ROLE_MASTER, "i-m", "m6i.large", "10.0.1.10", "3.3.3.3", "master"),
            Node(ROLE_WORKER, "i-w1", "m6i.xlarge", "10.0.1.11", "3.3.3.4", "worker-1"),
            Node(ROLE_WORKER, "i-w2", "m6i.xlarge", "10.0.1.12", "3.3.3.5", "worker-2"),
        ],
    )


def request(*job_args: str) -> submit.JobRequest:
    return submit.JobRequest(
        s3path.parse(f"s3a://{BUCKET}/images/fruits"),
        s3path.parse(f"s3://{BUCKET}/runs/r1/"),
        submit.check_job_args(list(job_args)),
    )


# ---- the command lines -------------------------------------------------------------------


def test_spark_submit_runs_in_client_mode_on_the_private_master_with_the_nodes_python() -> None:
    argv = submit.submit_argv(inventory(), request("--weights", "imagenet", "--k", "8"),
                              "/tmp/sparkfab-run-x")
    assert argv[0] == "/opt/spark/bin/spark-submit"
    opts = dict(zip(argv[1:-9:2], argv[2:-9:2], strict=True))
    assert opts["--master"] == "spark://10.0.1.10:7077"  # private IP, never the public one
    assert opts["--deploy-mode"] == "client"
    confs = [argv[i + 1] for i, a in enumerate(argv) if a == "--conf"]
    assert "spark.pyspark.python=/opt/sparkfab/python/bin/python" in confs
    assert "spark.pyspark.driver.python=/opt/sparkfab/python/bin/python" in confs
    assert "spark.driver.host=10.0.1.10" in confs
    entry = argv.index("/tmp/sparkfab-run-x/featurize_pca.py")
    assert argv[entry + 1:] == [
        "--input", f"s3a://{BUCKET}/images/fruits/", "--output", f"s3a://{BUCKET}/runs/r1",
        "--weights", "imagenet", "--k", "8",  # passed through, in order
    ]
    assert "3.3.3.3" not in " ".join(argv)


@pytest.mark.parametrize(("user", "prefix"), [
    ("ubuntu", ["sudo", "-n", "-u", "spark", "--"]),
    ("root", ["runuser", "-u", "spark", "--"]),
])
def test_the_driver_runs_as_the_service_user_in_its_own_session(user: str, prefix: list) -> None:
    inv = inventory(user)
    app = submit.job_app(request())
    cmd = shlex.split(submit.remote_submit_command(inv, app, "/tmp/sparkfab-run-x"))
    assert cmd[:len(prefix)] == prefix  # only that user can read the RPC secret
    assert cmd[len(prefix):len(prefix) + 4] == ["setsid", "-w", "sh", "-c"]
    inner = cmd[len(prefix) + 4]
    assert inner.startswith("cd /tmp/sparkfab-run-x && export HOME=\"$(getent passwd spark "
                            "| cut -d: -f6)\" && echo $$ > driver.pid && exec ")
    assert shlex.split(inner.split(" exec ", 1)[1]) == submit.app_argv(
        inv, app, "/tmp/sparkfab-run-x")
    # Stopped and cleaned up as that user too: root never acts on what it wrote.
    for command in (submit.stop_command(inv, "/tmp/sparkfab-run-x"),
                    submit.cleanup_command(inv, "/tmp/sparkfab-run-x")):
        assert shlex.split(command)[:len(prefix)] == prefix


@pytest.mark.parametrize(("pid", "signalled"), [
    ("4242", "-TERM -4242"), ("4242\n", "-TERM -4242"),
    ("1", None), ("0", None), ("-1", None), ("00", None), ("017", None), ("", None),
    ("12 34", None), ("1;reboot", None), ("$(touch pwned)", None), ("4242abc", None),
])
def test_stop_signals_only_a_plain_driver_pid(pid: str, signalled: str | None,
                                             tmp_path: Path) -> None:
    """driver.pid is written by the service user; what it says must never make `kill`
    reach init's group (1), every process (-1) or the caller's own group (0)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "driver.pid").write_text(pid)
    inner, args = _stop_script(submit.stop_command(inventory("root"), str(run)))
    # `kill -0` fails in the shim: the group is gone after the TERM.
    probe = subprocess.run(
        ["sh", "-c", f'kill() {{ echo "$*" >>"{tmp_path}/kills"; [ "$1" != -0 ]; }}\n{inner}',
         *args], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert probe.returncode == 0, probe.stderr
    kills = (tmp_path / "kills").read_text().splitlines() if (tmp_path / "kills").exists() \
        else []
    assert kills == ([signalled, f"-0 {signalled.split()[1]}"] if signalled else [])
    assert not (tmp_path / "pwned").exists()


def _stop_script(command: str) -> tuple[str, list[str]]:
    """The stop command's script and its arguments, without the service-user prefix."""
    words = shlex.split(command)
    inner, args = words[words.index("-c") + 1], words[words.index("-c") + 2:]
    return inner, args[:args.index("2>/dev/null")] if "2>/dev/null" in args else args


@pytest.mark.parametrize("ignores_term", [False, True])
def test_stop_ends_a_real_driver_group_under_sh(ignores_term: bool, tmp_path: Path) -> None:
    """Under the node's /bin/sh (dash on Debian): the driver and its children end, by TERM,
    or by KILL after the grace when TERM is ignored."""
    run = tmp_path / "run"
    run.mkdir()
    trap = "trap '' TERM; " if ignores_term else ""
    driver = subprocess.Popen(["sh", "-c", f"{trap}sleep 60 & {trap}sleep 60; wait"],
                              start_new_session=True)
    try:
        (run / "driver.pid").write_text(f"{driver.pid}\n")
        inner, args = _stop_script(submit.stop_command(inventory("root"), str(run)))
        args[2] = "2"  # the grace, shortened (args[0] is $0)
        started = time.monotonic()
        subprocess.run(["/bin/sh", "-c", inner, *args], check=True, timeout=30)
        assert driver.wait(timeout=10) == (-9 if ignores_term else -15)
        assert time.monotonic() - started < 10
        for _ in range(50):  # the orphaned child is reaped by init, not by us
            if subprocess.run(["sh", "-c", f"kill -0 -{driver.pid}"],
                              capture_output=True).returncode != 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("a child of the driver outlived the stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, 9)
        driver.wait()


def test_the_run_folder_and_the_upload_avoid_shared_tmp() -> None:
    run = submit.run_dir("20261201-000000-abcdef")
    assert run == "/var/lib/spark/runs/20261201-000000-abcdef"
    staged = submit.staged_zip("20261201-000000-abcdef")
    assert staged == ".sparkfab/job-20261201-000000-abcdef.zip"  # the SSH user's 0700 home
    steps = submit.prepare_command(inventory("ubuntu"), staged, run).split(" && ")
    spark = "sudo -n -u spark -- "
    assert steps[0] == f"{spark}mkdir -p -m 0700 /var/lib/spark/runs"
    assert steps[2] == f"{spark}mkdir -m 0700 {run}"  # fails if anyone made it first
    # The zip reaches the run folder through the service user's own write, from stdin.
    assert steps[3] == f"{spark}sh -c 'cat >\"$1\"' _ {run}/{submit.BUNDLE} <{staged}"
    assert all(s.startswith(spark) or s == f"rm -f {staged}" for s in steps)
    assert "/tmp" not in " ".join(steps)


def test_run_job_sets_input_and_output_itself() -> None:
    with pytest.raises(UserError, match="--output is set by run-job"):
        submit.check_job_args(["--k", "3", "--output=s3a://x/y"])


@pytest.mark.parametrize("fixed", [["--k", "3"], ["--variance=0.9"]])
def test_pca_from_with_its_own_k_fails_before_any_ssh(fixed: list[str]) -> None:
    with pytest.raises(UserError, match="--pca-from takes k from the earlier run"):
        submit.check_job_args(["--pca-from", "s3a://b/runs/r1", *fixed])
    assert submit.check_job_args(["--pca-from", "s3a://b/runs/r1"])


def test_the_job_package_holds_the_modules_flat_and_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "featurize_pca.py").write_text("import images\n")
    (tmp_path / "images.py").write_text("X = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "images.cpython-311.pyc").write_bytes(b"\0")
    first = submit.package_job(tmp_path)
    assert first == submit.package_job(tmp_path)
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert sorted(zf.namelist()) == ["featurize_pca.py", "images.py"]
    real = zipfile.ZipFile(io.BytesIO(submit.package_job()))
    assert {"featurize_pca.py", "images.py", "featurize.py", "reduce.py",
            "outputs.py"} <= set(real.namelist())
    (tmp_path / "featurize_pca.py").unlink()
    with pytest.raises(UserError, match="featurize_pca.py not found"):
        submit.package_job(tmp_path)


# ---- checks against S3 before any SSH -------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """The cluster's bucket, with weights staged as `fab stage` does."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
        staged = tmp_path_factory.mktemp("weights") / "demo.weights.h5"
        staged.write_bytes(b"staged weights")
        weights.stage(client, BUCKET, staged, "demo", say=lambda line: None)
        yield client


def test_preflight_refuses_what_the_job_would_fail_on(s3) -> None:
    inv = inventory()
    with pytest.raises(UserError, match="is empty or does not exist"):
        submit.preflight(s3, inv, request())
    s3.put_object(Bucket=BUCKET, Key="images/fruits/apple/1.jpg", Body=b"x")
    submit.preflight(s3, inv, request())  # passes now
    s3.put_object(Bucket=BUCKET, Key="runs/r1/manifest.json", Body=b"{}")
    with pytest.raises(UserError, match="already holds objects"):
        submit.preflight(s3, inv, request())
    other = submit.JobRequest(request().input, s3path.parse("s3://someone-elses/out"))
    with pytest.raises(UserError, match="outside the cluster's bucket") as err:
        submit.preflight(s3, inv, other)
    assert "fab upload-data" in err.value.hint
    whole = submit.JobRequest(request().input, s3path.parse(f"s3://{BUCKET}"))
    with pytest.raises(UserError, match="is a whole bucket"):
        submit.preflight(s3, inv, whole)


def test_a_local_weights_file_is_staged_once_in_the_bucket(s3, tmp_path: Path) -> None:
    weights = tmp_path / "net.weights.h5"
    weights.write_bytes(b"w" * 1000)
    out = io.StringIO()
    args = submit.stage_local_weights(s3, inventory(), ("--weights", str(weights), "--k", "4"),
                                      out)
    assert args == ("--weights", f"s3a://{BUCKET}/sparkfab/weights/net.weights.h5", "--k", "4")
    body = s3.get_object(Bucket=BUCKET, Key="sparkfab/weights/net.weights.h5")["Body"].read()
    assert body == weights.read_bytes()
    out2 = io.StringIO()
    again = submit.stage_local_weights(s3, inventory(), (f"--weights={weights}",), out2)
    assert again == (f"--weights=s3a://{BUCKET}/sparkfab/weights/net.weights.h5",)
    assert out2.getvalue() == ""  # same size already there: not uploaded again
    for kept in (("--weights", "imagenet"), ("--weights", "random"),
                 ("--weights", f"s3a://{BUCKET}/w.h5")):
        assert submit.stage_local_weights(s3, inventory(), kept, out) == kept
    with pytest.raises(UserError, match="no such file here"):
        submit.stage_local_weights(s3, inventory(), ("--weights", "nope.h5"), out)


# ---- the result -----------------------------------------------------------------------------

MANIFEST = {  # the shape job/featurize_pca.py writes
    "run_id": "r1", "status": "complete",
    "counts": {"input": 10, "ok": 8, "failed": 2, "skipped": 1, "files_seen": 11},
    "pca": {"k": 3, "variance_target": 0.9, "explained_variance": [0.6, 0.2, 0.12],
            "cumulative_explained_variance": [0.6, 0.8, 0.92]},
    "files": ["features.parquet", "pca_matrix.csv", "errors.csv", "manifest.json",
              "pca_scatter.png", "explained_variance.png"],
}


def test_the_manifest_is_read_only_from_a_committed_run(s3) -> None:
    out = s3path.parse(f"s3://{BUCKET}/runs/r1")
    s3.put_object(Bucket=BUCKET, Key="runs/r1/manifest.json", Body=json.dumps(MANIFEST))
    assert submit.read_manifest(s3, out) is None  # no _SUCCESS: not complete
    s3.put_object(Bucket=BUCKET, Key="runs/r1/_SUCCESS", Body=b"")
    assert submit.read_manifest(s3, out) == MANIFEST


def test_summary_gives_counts_k_variance_and_where() -> None:
    text = submit.summarize(MANIFEST, s3path.parse(f"s3://{BUCKET}/runs/r1"))
    assert "10 input = 8 featurized + 2 failed; 1 non-image files skipped" in text
    assert "k = 3, explained variance 0.920 (target 0.9)" in text
    assert f"s3://{BUCKET}/runs/r1/ (features.parquet, pca_matrix.csv" in text
    assert submit.check_manifest(MANIFEST) is None
    bad = dict(MANIFEST, counts={"input": 10, "ok": 8, "failed": 1})
    assert "input 10 != ok 8 + failed 1" in submit.check_manifest(bad)


# ---- Spark's output -------------------------------------------------------------------------

# What a standalone driver prints (Spark 4.0.1's default log4j layout), with a worker lost.
DRIVER_STDERR = (Path(__file__).parent / "data" / "spark-driver-stderr.txt").read_text()


def test_spark_chatter_becomes_progress_lines() -> None:
    shown: list[str] = []
    clock = iter(range(0, 1000, 1))  # one second per line: progress throttled to every 5 s
    log = DriverLog(show=shown.append, clock=lambda: float(next(clock)))
    splitter = LineSplitter(log.stderr)
    for chunk in (DRIVER_STDERR[:500], DRIVER_STDERR[500:1501], DRIVER_STDERR[1501:]):
        splitter.write(chunk)  # SSH delivers arbitrary chunks, not lines
    splitter.close()
    assert shown == [
        "[spark] application app-20261123073250-0003 started",
        "[spark] executor 0 on 10.0.1.11 (2 cores)",
        "[spark] executor 1 on 10.0.1.12 (2 cores)",
        "[featurize_pca] featurize ...",
        "[spark] stage 0: collect at featurize_pca.py:3, 4 tasks",
        "[spark] stage 0: 1/4 tasks done",
        "[spark] ERROR Lost executor 1 on 10.0.1.12: worker lost",
        "[spark] WARN Lost task 3.0 in stage 0.0 (TID 3) (10.0.1.12 executor 1): "
        "ExecutorLostFailure (executor 1 exited caused by one of the running tasks) "
        "Reason: worker lost",
        "[spark] stage 0: 4/4 tasks done",
        "[spark] stage 0 finished in 6.6 s",
        "[spark] stage 7: collect at featurize_pca.py:270, 5 tasks",
        # the multi-line record's plan is not echoed; a Python traceback after it is
        "Traceback (most recent call last):",
        '  File "/tmp/sparkfab-run-x/featurize_pca.py", line 270, in run',
        # known-harmless lines are not shown; a record whose call site wraps still is
        "[spark] stage 3: collect, 5 tasks",
    ]
    assert log.ui_port == 4040
    assert log.tasks_by_host == {"10.0.1.11": 3, "10.0.1.12": 1}
    assert log.lost_executors == ["1@10.0.1.12"]


def test_the_failure_line_is_the_jobs_own_error() -> None:
    log = DriverLog(show=lambda _line: None)
    for line in DRIVER_STDERR.splitlines():
        log.stderr(line)
    log.stderr("error: no .jpg/.jpeg/.png files under s3a://b/empty/")
    log.stderr("26/11/23 07:33:10 INFO ShutdownHookManager: Shutdown hook called")
    assert log.failure_line() == "error: no .jpg/.jpeg/.png files under s3a://b/empty/"
    crash = DriverLog(show=lambda _line: None)
    for line in ("Traceback (most recent call last):", '  File "x.py", line 1',
                 "py4j.protocol.Py4JJavaError: An error occurred while calling o42.parquet"):
        crash.stderr(line)
    assert crash.failure_line().startswith("py4j.protocol.Py4JJavaError")
    denied = DriverLog(show=lambda _line: None)
    for line in ("py4j.protocol.Py4JJavaError: An error occurred while calling o91.parquet.",
                 ": java.nio.file.AccessDeniedException: s3a://other-bucket/runs/r1/_tmp-x: "
                 "getFileStatus on s3a://other-bucket/runs/r1/_tmp-x: software.amazon.awssdk."
                 "services.s3.model.S3Exception: Forbidden (Service: S3, Status Code: 403)",
                 "\tat org.apache.hadoop.fs.s3a.S3AUtils.translateException(S3AUtils.java:260)"):
        denied.stderr(line)
    assert denied.failure_line() == (
        "S3 denied access to s3a://other-bucket/runs/r1/_tmp-x (the nodes' role may only use "
        "the cluster's bucket)")


# ---- the orchestration, with a scripted master ----------------------------------------------


class FakeResult:
    def __init__(self, exited: int, stdout: str = "", stderr: str = "") -> None:
        self.exited, self.stdout, self.stderr = exited, stdout, stderr
        self.ok = exited == 0


class FakeMaster:
    """Stands in for the Fabric connection: records commands, replays a driver's output,
    and on success commits a run to moto S3 the way the job does."""

    def __init__(self, s3, exit_code: int, stderr: str, commit: bool) -> None:
        self.s3, self.exit_code, self.stderr, self.commit = s3, exit_code, stderr, commit
        self.commands: list[str] = []
        self.uploads: dict[str, bytes] = {}

    def put(self, local, remote: str) -> None:
        self.uploads[remote] = local.read()

    def run(self, command: str, **kw) -> FakeResult:
        self.commands.append(command)
        if "spark-submit" in command and "out_stream" in kw:
            kw["out_stream"].write('{"output": "s3a://x", "counts": {}}\n')
            kw["err_stream"].write(self.stderr)
            if self.commit:
                self.s3.put_object(Bucket=BUCKET, Key="runs/r1/manifest.json",
                                   Body=json.dumps(MANIFEST))
                self.s3.put_object(Bucket=BUCKET, Key="runs/r1/_SUCCESS", Body=b"")
            return FakeResult(self.exit_code)
        return FakeResult(0)


class FakeRemote:
    def __init__(self, conn: FakeMaster) -> None:
        self.conn = conn

    def connection(self, node: Node) -> FakeMaster:
        assert node.role == ROLE_MASTER
        return self.conn


def test_a_successful_run_ships_the_job_streams_and_returns_the_manifest(
    s3, tmp_path: Path
) -> None:
    s3.put_object(Bucket=BUCKET, Key="images/fruits/apple/1.jpg", Body=b"x")
    master = FakeMaster(s3, 0, DRIVER_STDERR, commit=True)
    out = io.StringIO()
    result = submit.run_on_cluster(inventory(), FakeRemote(master), s3, request(),
                                   tmp_path / "logs", out=out)
    assert result.manifest == MANIFEST
    # No --weights: the driver reads the bucket's staged copy, never a download.
    digest = hashlib.sha256(b"staged weights").hexdigest()
    staged_url = f"s3a://{BUCKET}/sparkfab/weights/{digest[:16]}/demo.weights.h5"
    submitted, = (c for c in master.commands if "spark-submit" in c)
    assert f"--weights {staged_url}" in submitted
    assert f"weights: {staged_url} (staged demo, sha256 {digest[:16]})" in out.getvalue()
    (staged, payload), = master.uploads.items()
    assert zipfile.ZipFile(io.BytesIO(payload)).namelist() == ["featurize_pca.py", "job.zip"]
    assert staged.startswith(".sparkfab/job-")  # the SSH user's private folder, not /tmp
    assert master.commands[0].startswith("mkdir -p -m 0700 .sparkfab && chmod 0700")
    assert staged in master.commands[1]  # prepared: moved into the run folder and unpacked
    assert "spark-submit" in master.commands[2]
    assert master.commands[-1].startswith("sudo -n -u spark -- rm -rf /var/lib/spark/runs/")
    shown = out.getvalue()
    assert "[spark] executor 1 on 10.0.1.12 (2 cores)" in shown
    assert "tasks finished per host: 10.0.1.11: 3, 10.0.1.12: 1" in shown
    assert "26/11/23 07:32:43 INFO SparkContext" in result.log_path.read_text()  # all kept


def test_without_weights_given_or_staged_run_job_says_to_stage_them(s3, tmp_path: Path
                                                                     ) -> None:
    s3.put_object(Bucket=BUCKET, Key="images/fruits/apple/1.jpg", Body=b"x")
    s3.delete_object(Bucket=BUCKET, Key=weights.DEFAULT_POINTER)
    master = FakeMaster(s3, 0, "", commit=True)
    with pytest.raises(UserError, match="no --weights given and none staged") as err:
        submit.run_on_cluster(inventory(), FakeRemote(master), s3, request(), tmp_path,
                              out=io.StringIO())
    assert "fab stage" in err.value.hint and master.commands == []
    given = request("--weights", "random")
    assert submit.default_weights(s3, inventory(), given.job_args, io.StringIO()) == \
        ("--weights", "random")


def test_a_failed_job_is_one_clear_error_and_nonzero(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="images/fruits/readme.txt", Body=b"x")
    master = FakeMaster(s3, 2, "error: no .jpg/.jpeg/.png files under "
                               f"s3a://{BUCKET}/images/fruits/ (1 other files skipped)\n",
                        commit=False)
    with pytest.raises(UserError) as err:
        submit.run_on_cluster(inventory(), FakeRemote(master), s3, request(), tmp_path,
                              out=io.StringIO())
    assert err.value.message == (
        "the job failed on the cluster (exit 2): error: no .jpg/.jpeg/.png files under "
        f"s3a://{BUCKET}/images/fruits/ (1 other files skipped)")
    assert "driver's full log" in err.value.hint
    assert master.commands[-1].startswith("sudo -n -u spark -- rm -rf /var/lib/spark/runs/")


def test_exit_zero_without_a_committed_run_is_still_a_failure(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="images/fruits/apple/1.jpg", Body=b"x")
    master = FakeMaster(s3, 0, "", commit=False)
    with pytest.raises(UserError, match="has no committed run"):
        submit.run_on_cluster(inventory(), FakeRemote(master), s3, request(), tmp_path,
                              out=io.StringIO())


def test_a_dropped_ssh_connection_says_the_job_may_still_run(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="images/fruits/apple/1.jpg", Body=b"x")

    class Dropping(FakeMaster):
        def run(self, command: str, **kw) -> FakeResult:
            if "spark-submit" in command and "out_stream" in kw:
                raise EOFError("connection closed by 3.3.3.3")
            return super().run(command, **kw)

    with pytest.raises(UserError, match="lost the SSH connection to master") as err:
        submit.run_on_cluster(inventory(), FakeRemote(Dropping(s3, 0, "", False)), s3,
                              request(), tmp_path, out=io.StringIO())
    assert "may still be running" in err.value.hint


# ---- fab submit: any script ------------------------------------------------------------------


def test_any_script_ships_with_its_py_files_and_arguments(tmp_path: Path) -> None:
    script = tmp_path / "count.py"
    script.write_text("import helpers\n")
    helpers = tmp_path / "helpers.py"
    helpers.write_text("X = 1\n")
    libs = tmp_path / "libs.zip"
    libs.write_bytes(b"PK\5\6" + b"\0" * 18)
    app = submit.app_from_paths(script, [helpers, libs], ["--n", "3", "a b"])
    argv = submit.app_argv(inventory(), app, "/tmp/r")
    assert argv[argv.index("--name") + 1] == "sparkfab-count"
    assert argv[argv.index("--py-files") + 1] == "/tmp/r/helpers.py,/tmp/r/libs.zip"
    assert argv[-4:] == ["/tmp/r/count.py", "--n", "3", "a b"]  # arguments, verbatim
    assert argv[:argv.index("--py-files")] == submit.app_argv(
        inventory(), submit.App("sparkfab-count", "count.py", app.files[:1]), "/tmp/r")[:-1]
    with zipfile.ZipFile(io.BytesIO(submit.bundle(app))) as zf:
        assert zf.namelist() == ["count.py", "helpers.py", "libs.zip"]
        assert zf.read("helpers.py") == b"X = 1\n"
    inner = shlex.split(shlex.split(submit.remote_submit_command(inventory(), app, "/tmp/r"))[-1]
                        .split(" exec ", 1)[1])
    assert inner == argv  # every value reaches the shell quoted


def test_a_script_without_py_files_has_no_py_files_flag(tmp_path: Path) -> None:
    script = tmp_path / "pi.py"
    script.write_text("print(1)\n")
    argv = submit.app_argv(inventory(), submit.app_from_paths(script), "/tmp/r")
    assert "--py-files" not in argv
    assert argv[-1] == "/tmp/r/pi.py"


def test_bad_submissions_fail_here_with_one_line(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    with pytest.raises(UserError, match="no such file"):
        submit.app_from_paths(script)
    script.write_text("")
    notes = tmp_path / "notes.txt"
    notes.write_text("")
    with pytest.raises(UserError, match="not a .py file"):
        submit.app_from_paths(notes)
    with pytest.raises(UserError, match="not a .py, .zip or .egg") as err:
        submit.app_from_paths(script, [notes])
    assert "zip a package folder" in err.value.hint
    with pytest.raises(UserError, match="--py-files .*missing.py: no such file"):
        submit.app_from_paths(script, [tmp_path / "missing.py"])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "app.py").write_text("")
    with pytest.raises(UserError, match="two files named the same"):
        submit.app_from_paths(script, [tmp_path / "sub" / "app.py"])
    with pytest.raises(UserError, match="not a plain file name"):
        submit.App("x", ".bundle.zip", ((".bundle.zip", b""),))


def test_a_failing_script_returns_its_exit_status_and_cleans_up(s3, tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text("raise SystemExit(3)\n")
    master = FakeMaster(s3, 3, "Traceback (most recent call last):\n"
                               "ValueError: the input is odd\n", commit=False)
    out = io.StringIO()
    done = submit.run_app(inventory(), FakeRemote(master), submit.app_from_paths(script),
                          tmp_path / "logs", out=out)
    assert done.exit_code == 3  # passed on, not raised: `fab submit` exits with it
    assert done.driver.failure_line() == "ValueError: the input is odd"
    assert "ValueError: the input is odd" in done.log_path.read_text()
    (staged, payload), = master.uploads.items()
    assert zipfile.ZipFile(io.BytesIO(payload)).namelist() == ["fail.py"]
    assert master.commands[-1].startswith("sudo -n -u spark -- rm -rf /var/lib/spark/runs/")


def test_store_locations_become_s3a_urls_in_the_clusters_bucket() -> None:
    inv = SimpleNamespace(bucket=BUCKET)
    assert submit.storage_args(inv, ("--k", "3")) == (
        "--k", "3", "--features", f"s3a://{BUCKET}/features")
    assert submit.storage_args(inv, ("--features", f"s3://{BUCKET}/store/",
                                     f"--pca-from=s3://{BUCKET}/runs/r1")) == (
        "--features", f"s3a://{BUCKET}/store", f"--pca-from=s3a://{BUCKET}/runs/r1")
    with pytest.raises(UserError, match="outside the cluster's bucket"):
        submit.storage_args(inv, ("--pca-from", "s3://other-bucket/runs/r1"))
    with pytest.raises(UserError, match="is not an S3 location"):
        submit.storage_args(inv, ("--features", "/local/store"))


def test_summary_gives_the_stores_counts() -> None:
    manifest = dict(MANIFEST, store={
        "path": f"s3a://{BUCKET}/features", "fingerprint": "tensorflow-abc", "reused": 7,
        "featurized_now": 3, "failed": 2, "failed_reused": 2,
        "size": {"images": 30, "batches": 2, "bytes": 1_000_000}})
    text = submit.summarize(manifest, s3path.parse(f"s3://{BUCKET}/runs/r1"))
    assert "feature store: 7 reused, 3 featurized now, 2 failed (2 known bad" in text
