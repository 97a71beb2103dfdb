"""The install templates: rendered for several settings, linted with shellcheck, and the
shell logic that needs no root (download + verify, config replacement, the supervisor, the
venv step) run for real in a temporary directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkfab import artifacts, install, notebook
from sparkfab.artifacts import Download
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node
from sparkfab.layout import Layout
from sparkfab.render import render
from sparkfab.sizing import WorkerResources

SECRET = "f00dfeed" * 8
URL = "http://10.77.0.1:5000/b/k?X-Amz-Credential=a%2Fb&X-Amz-Signature=0a1b&X-Amz-Expires=9"
# Values are data, never shell syntax, even when they look like it.
HOSTILE_URL = "http://10.77.0.1:5000/k?a=1&b=$(touch /tmp/sparkfab-pwned)`id`'\"x"


def _downloads(url: str = URL) -> dict[str, Download]:
    names = {
        artifacts.SPARK: "spark-4.0.1-bin-hadoop3.tgz",
        artifacts.HADOOP_AWS: "hadoop-aws-3.4.1.jar",
        artifacts.SDK_BUNDLE: "bundle-2.24.6.jar",
        artifacts.WHEELHOUSE: "wheelhouse.tar",
        artifacts.MINIFORGE: "Miniforge3-25.3.1-0-Linux-x86_64.sh",
    }
    return {n: Download(n, f, url, "sha512", "ab" * 64) for n, f in names.items()}


def _inventory(local: bool) -> Inventory:
    return Inventory(
        cluster="demo",
        region="eu-west-3",
        ssh_user="root" if local else "ubuntu",
        nodes=[
            Node(ROLE_MASTER, "i-1", "m6i.large", "10.0.0.10", "3.3.3.3", "master"),
            Node(ROLE_WORKER, "i-2", "m6i.xlarge", "10.0.0.11", "3.3.3.4", "worker-1"),
        ],
        bucket="demo-bucket",
        endpoint_url="http://10.77.0.1:5000" if local else None,
        spark_secret=SECRET,
    )


def _all_rendered(local: bool, python_env: str) -> dict[str, str]:
    """Every file the install puts on a master and a worker, by a readable name."""
    plan = install.InstallPlan("4.0.1", "3.11", python_env, _downloads())
    out = {f"install-{s}.sh": install.render_step(s, plan) for s in install.INSTALL_STEPS}
    inv = _inventory(local)
    for node in inv.nodes:
        res = WorkerResources(4, 14000) if node.role == ROLE_WORKER else None
        files = install.config_files(inv, node, res)
        out.update({f"{node.name}:{Path(f.dest).name}": f.content for f in files})
        out[f"{node.name}:configure.sh"] = install.render_configure(node, files)
    out["start-service.sh"] = render("start-service.sh", layout=Layout().as_dict(),
                                     name="spark-master")
    out["notebook-env.sh"] = notebook.render_launcher(inv, notebook.Paths.of())
    return out


def _is_shell(name: str, text: str) -> bool:
    return text.startswith(("#!/usr/bin/env bash", "#!/bin/sh")) or name.endswith("spark-env.sh")


SETTINGS = [(True, "venv"), (False, "venv"), (True, "conda"), (False, "conda")]


def test_every_rendered_shell_script_passes_shellcheck(tmp_path: Path) -> None:
    """Local cloud and AWS, venv and conda, master and worker: every distinct script."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck; .ci/run does it)")
    scripts: dict[str, str] = {}  # content -> a name for it
    for local, python_env in SETTINGS:
        for name, text in _all_rendered(local, python_env).items():
            if _is_shell(name, text):
                scripts.setdefault(text, f"{'local' if local else 'aws'}-{python_env}-{name}")
    assert len(scripts) >= 16
    paths = []
    for text, name in scripts.items():
        p = tmp_path / name.replace(":", "_")
        p.write_text(text)
        paths.append(str(p))
    proc = subprocess.run(["shellcheck", "--shell=bash", "--severity=style", *paths],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_urls_reach_the_command_intact(tmp_path: Path) -> None:
    plan = install.InstallPlan("4.0.1", "3.11", "venv", _downloads(HOSTILE_URL))
    script = install.render_step("packages", plan)
    line = next(x for x in script.splitlines() if x.startswith("fetch "))
    probe = subprocess.run(["bash", "-c", f"fetch() {{ printf '%s' \"$1\"; }}\n{line}"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout == HOSTILE_URL
    assert not Path("/tmp/sparkfab-pwned").exists()


def test_secret_and_security_settings_in_spark_defaults() -> None:
    for local in (True, False):
        files = _all_rendered(local, "venv")
        conf = dict(
            line.split(None, 1) for line in files["master:spark-defaults.conf"].splitlines()
            if line and not line.startswith("#")
        )
        assert conf["spark.authenticate"] == "true"
        assert conf["spark.authenticate.secret"] == SECRET
        assert conf["spark.network.crypto.enabled"] == "true"
        assert conf["spark.master.rest.enabled"] == "false"
        assert conf["spark.master"] == "spark://10.0.0.10:7077"
        assert conf["spark.eventLog.dir"] == "s3a://demo-bucket/spark-events/"
        if local:
            assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://10.77.0.1:5000"
            assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
        else:
            assert "spark.hadoop.fs.s3a.endpoint" not in conf
            assert "spark.hadoop.fs.s3a.path.style.access" not in conf
        # The instance profile through IMDSv2 on AWS and on the local cloud's booted
        # machines: no key on any node.
        assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == (
            "org.apache.hadoop.fs.s3a.auth.IAMInstanceCredentialsProvider")
        env = files["worker-1:spark-env.sh"]
        assert "AWS_" not in env
        assert "export SPARK_LOCAL_IP=10.0.0.11" in env
        assert "SPARK_WORKER_CORES=4" in env and "SPARK_WORKER_MEMORY=14000m" in env
        assert "SPARK_WORKER_CORES" not in files["master:spark-env.sh"]


def test_only_a_shared_kernel_test_host_signs_with_moto_dummies() -> None:
    """The namespace test hosts (no metadata service) are the one place dummy keys go."""
    inv = _inventory(local=True)
    inv.extra["shared_kernel"] = True
    files = {Path(f.dest).name: f.content for f in install.config_files(inv, inv.workers[0],
                                                                        None)}
    assert "AWS_ACCESS_KEY_ID=testing" in files["spark-env.sh"]
    assert ("EnvironmentVariableCredentialsProvider" in files["spark-defaults.conf"]
            and "IAMInstanceCredentialsProvider" not in files["spark-defaults.conf"])


def _defaults_conf(local: bool) -> dict[str, str]:
    text = _all_rendered(local, "venv")["master:spark-defaults.conf"]
    return dict(line.split(None, 1) for line in text.splitlines()
                if line and not line.startswith("#"))


def test_shuffle_and_spill_files_are_encrypted() -> None:
    for local in (True, False):
        conf = _defaults_conf(local)
        assert conf["spark.io.encryption.enabled"] == "true"
        assert conf["spark.network.crypto.enabled"] == "true"
        # Authenticated encryption: CTR, the default, lets the network alter RPC messages.
        assert conf["spark.network.crypto.cipher"] == "AES/GCM/NoPadding"


def test_only_the_service_user_can_read_the_secret() -> None:
    inv = _inventory(local=False)
    files = {Path(f.dest).name: f for f in install.config_files(inv, inv.master, None)}
    defaults = files["spark-defaults.conf"]
    assert SECRET in defaults.content
    assert (defaults.mode, defaults.owner) == ("0600", "spark:spark")
    assert not [f for f in files.values() if SECRET in f.content and f is not defaults]


def test_units_restart_on_failure_as_the_service_user() -> None:
    files = _all_rendered(local=False, python_env="venv")
    for name in ("master:spark-master.service", "worker-1:spark-worker.service"):
        unit = files[name]
        assert "Restart=on-failure" in unit and "User=spark" in unit
        assert "ExecStart=/opt/sparkfab/bin/spark-" in unit
    worker = files["worker-1:spark-worker"]
    assert "org.apache.spark.deploy.worker.Worker" in worker
    assert "--host 10.0.0.11" in worker and "spark://10.0.0.10:7077" in worker


def test_missing_artifact_is_a_clear_error() -> None:
    plan = install.InstallPlan("4.0.1", "3.11", "conda",
                               {k: v for k, v in _downloads().items()
                                if k != artifacts.MINIFORGE})
    with pytest.raises(install.UserError, match="no miniforge artifact"):
        install.render_step("python", plan)


# ---- the shell logic, run for real --------------------------------------------------------


def _lib_harness(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    layout = Layout(state_dir=str(tmp_path / "state"), downloads=str(tmp_path / "dl"))
    script = render("_lib.sh", layout=layout.as_dict()) + body
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


def test_fetch_keeps_a_download_only_when_its_checksum_matches(tmp_path: Path) -> None:
    src = tmp_path / "artifact.bin"
    src.write_bytes(os.urandom(4096))
    good = hashlib.sha512(src.read_bytes()).hexdigest()
    url = f"file://{src}"
    ok = _lib_harness(tmp_path, f'fetch "{url}" "$DOWNLOADS/a.bin" sha512 {good}\n')
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "dl" / "a.bin").read_bytes() == src.read_bytes()

    # Already there and valid: no second download (the source is gone now).
    src.rename(tmp_path / "moved")
    again = _lib_harness(tmp_path, f'fetch "{url}" "$DOWNLOADS/a.bin" sha512 {good}\n')
    assert again.returncode == 0 and "downloading" not in again.stdout

    (tmp_path / "moved").rename(src)
    bad = _lib_harness(tmp_path, f'fetch "{url}" "$DOWNLOADS/b.bin" sha512 {"0" * 128}\n')
    assert bad.returncode != 0
    assert "sha512 checksum mismatch" in bad.stderr
    assert not (tmp_path / "dl" / "b.bin").exists()
    assert not (tmp_path / "dl" / "b.bin.part").exists()


def test_configure_replaces_only_what_differs_and_flags_a_restart(tmp_path: Path) -> None:
    layout = Layout(state_dir=str(tmp_path / "state"), downloads=str(tmp_path / "dl"),
                    bin_dir=str(tmp_path / "bin"), spark_link=str(tmp_path / "spark"),
                    spark_conf=str(tmp_path / "spark" / "conf"))
    me = f"{os.getuid()}:{os.getgid()}"
    node = _inventory(local=True).master

    def configure(content: str) -> subprocess.CompletedProcess[str]:
        files = [
            install.ConfigFile(f"{tmp_path}/conf/a.conf", content, "0600", me),
            install.ConfigFile(f"{tmp_path}/bin/tool", "#!/bin/sh\n", "0755", me,
                               restarts=False),
        ]
        script = install.render_configure(node, files, layout)
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True)

    flag = tmp_path / "state" / "restart-spark-master"
    first = configure("x = 1\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("sparkfab-changed:") == 2 and flag.exists()
    assert (tmp_path / "conf" / "a.conf").read_text() == "x = 1\n"
    assert oct((tmp_path / "conf" / "a.conf").stat().st_mode & 0o777) == "0o600"

    flag.unlink()
    same = configure("x = 1\n")
    assert "sparkfab-changed:" not in same.stdout and not flag.exists()

    (tmp_path / "conf" / "a.conf").chmod(0o644)  # drifted permissions are repaired
    drift = configure("x = 1\n")
    assert drift.stdout.count("sparkfab-changed:") == 1 and flag.exists()

    flag.unlink()
    edited = configure("x = 2\n")
    assert "a.conf" in edited.stdout and flag.exists()
    assert not list((tmp_path / "conf").glob("a.conf.*"))  # no temporary files left


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and setsid")
def test_supervisor_restarts_a_failed_daemon_and_stops_it(tmp_path: Path) -> None:
    layout = Layout(bin_dir=str(tmp_path / "bin"), run_dir=str(tmp_path / "run"),
                    log_dir=str(tmp_path / "log"))
    ctx = layout.as_dict()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, template in (("sparkfab-supervise", "sparkfab-supervise.sh"),
                           ("sparkfab-service", "sparkfab-service.sh")):
        (bin_dir / name).write_text(render(template, layout=ctx))
        (bin_dir / name).chmod(0o755)
    (bin_dir / "fake-daemon").write_text("#!/bin/sh\nexec sleep 300\n")
    (bin_dir / "fake-daemon").chmod(0o755)
    service = [str(bin_dir / "sparkfab-service")]
    # The supervisor path even on a machine that runs systemd.
    os.environ["SPARKFAB_NO_SYSTEMD"] = "1"
    started: list[int] = []

    def status() -> tuple[int, str]:
        p = subprocess.run([*service, "status", "fake-daemon"], capture_output=True, text=True)
        return p.returncode, p.stdout

    def daemon_pid() -> int | None:
        rc, out = status()
        return int(out.split("pid=")[1]) if rc == 0 else None

    try:
        assert status()[0] == 3  # not running yet
        subprocess.run([*service, "start", "fake-daemon"], check=True, timeout=30)
        supervisor = int((tmp_path / "run" / "fake-daemon.pid").read_text())
        started.append(supervisor)
        assert _wait_for(lambda: daemon_pid() is not None)
        first = daemon_pid()
        assert first is not None
        started.append(first)
        # start again: already running, nothing new
        subprocess.run([*service, "start", "fake-daemon"], check=True, timeout=30)
        assert daemon_pid() == first

        os.kill(first, signal.SIGKILL)  # a crash: the supervisor restarts it
        assert _wait_for(lambda: daemon_pid() not in (None, first))
        second = daemon_pid()
        assert second is not None
        started.append(second)
        assert "exited with 137; restarting" in (tmp_path / "log" / "fake-daemon.log").read_text()

        subprocess.run([*service, "stop", "fake-daemon"], check=True, timeout=60)
        assert _wait_for(lambda: not _pid_alive(second) and not _pid_alive(supervisor))
        assert status()[0] == 3
    finally:
        del os.environ["SPARKFAB_NO_SYSTEMD"]
        for pid in started:
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
