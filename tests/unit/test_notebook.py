"""`fab notebook` without a cluster: the commands run on the master, and the rendered
JupyterLab config run for real here (loopback, token, notebooks pulled from and saved to
S3 on a local moto_server)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from sparkfab import notebook
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node

REGION = "eu-west-3"
BUCKET = "sparkfab-demo-data"
REPO = Path(__file__).resolve().parents[2]


def inventory(ssh_user: str = "ubuntu", endpoint: str | None = None) -> Inventory:
    return Inventory(
        cluster="demo", region=REGION, ssh_user=ssh_user, bucket=BUCKET, endpoint_url=endpoint,
        nodes=[
            Node(ROLE_MASTER, "i-m", "m6i.large", "10.0.1.10", "3.3.3.3", "master"),
            Node(ROLE_WORKER, "i-w1", "m6i.xlarge", "10.0.1.11", "3.3.3.4", "worker-1"),
        ],
    )


PATHS = notebook.Paths.of()


def test_the_kernel_joins_the_cluster_as_a_driver_on_the_private_master() -> None:
    args = shlex.split(notebook.submit_args(inventory(), PATHS))
    assert args[:2] == ["--master", "spark://10.0.1.10:7077"]
    confs = [args[i + 1] for i, a in enumerate(args) if a == "--conf"]
    assert "spark.driver.host=10.0.1.10" in confs
    assert "spark.pyspark.python=/opt/sparkfab/python/bin/python" in confs
    assert args[args.index("--py-files") + 1] == "/var/lib/spark/notebook/session/job.zip"
    assert args[-1] == "pyspark-shell"  # what pyspark's launcher requires last
    assert "3.3.3.3" not in " ".join(args)
    launcher = notebook.render_launcher(inventory(), PATHS)
    assert ". /opt/spark/conf/spark-env.sh" in launcher
    assert "export PYTHONPATH=/var/lib/spark/notebook/session/job" in launcher
    assert launcher.rstrip().endswith('exec "$@"')


def test_the_session_ships_the_jobs_modules_and_the_rendered_files() -> None:
    import io
    import zipfile

    bundle = zipfile.ZipFile(io.BytesIO(notebook.session_bundle(inventory(), PATHS, 600)))
    assert sorted(bundle.namelist()) == sorted([notebook.LAUNCHER, notebook.SERVER_CONFIG,
                                                "job.zip"])
    job = zipfile.ZipFile(io.BytesIO(bundle.read("job.zip")))
    assert {"featurize_pca.py", "featurize.py", "images.py"} <= set(job.namelist())
    config = bundle.read(notebook.SERVER_CONFIG).decode()
    assert 'c.ServerApp.ip = "127.0.0.1"' in config
    assert "cull_idle_timeout = IDLE_S" in config and "IDLE_S = 600" in config
    no_bucket = inventory()
    no_bucket.bucket = None
    with pytest.raises(UserError, match="records no bucket"):
        notebook.render_server_config(no_bucket, PATHS, 600)


@pytest.mark.parametrize(("user", "prefix"), [
    ("ubuntu", "sudo -n -u spark -- "), ("root", "runuser -u spark -- ")])
def test_the_server_runs_as_the_service_user_and_the_token_never_on_a_command_line(
    user: str, prefix: str
) -> None:
    inv = inventory(user)
    start = notebook.start_command(inv, PATHS)
    assert start.startswith(prefix)
    inner = shlex.split(start)[-1]
    assert "setsid sh -c" in inner and inner.rstrip().endswith("&")
    assert "-m jupyterlab --config=/var/lib/spark/notebook/session/jupyter_server_config.py" \
        in shlex.split(inner)[shlex.split(inner).index("-c") + 1]
    token = notebook.token_command(inv, PATHS)
    assert token.startswith(prefix)
    assert "umask 077 && head -n 1 > /var/lib/spark/notebook/session/token" in token
    prep = notebook.prepare_command(inv, "/tmp/x.zip", PATHS)
    assert prep.startswith("{ ")  # an earlier server is stopped first
    assert "umask 077 && mkdir -p" in prep and "-m 0600 /tmp/x.zip" in prep


def test_stop_kills_only_a_valid_process_group(tmp_path: Path) -> None:
    paths = notebook.Paths(str(tmp_path), str(tmp_path / "nb"), str(tmp_path))
    inv = inventory("root")
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        for bad in ("", "1", "-5", "x; touch pwned"):
            Path(paths.pid).write_text(bad + "\n")
            assert subprocess.run(notebook.stop_command(inv, paths), shell=True).returncode == 0
            assert not (tmp_path / "pwned").exists()
        Path(paths.pid).write_text(f"{sleeper.pid}\n")
        assert subprocess.run(notebook.alive_command(inv, paths), shell=True).returncode == 0
        subprocess.run(notebook.stop_command(inv, paths), shell=True, check=True)
        assert sleeper.wait(timeout=30) in (-15, -9)  # -9: TERM ignored, killed after grace
        assert not Path(paths.pid).exists()
    finally:
        sleeper.kill()


def test_shipped_notebooks_are_seeded_once_never_over_a_users_copy(s3) -> None:
    written = notebook.seed_notebooks(s3, BUCKET)
    assert written == ["notebooks/featurize_pca.ipynb"]
    s3.put_object(Bucket=BUCKET, Key="notebooks/featurize_pca.ipynb", Body=b"edited")
    assert notebook.seed_notebooks(s3, BUCKET) == []
    body = s3.get_object(Bucket=BUCKET, Key="notebooks/featurize_pca.ipynb")["Body"].read()
    assert body == b"edited"


def test_the_shipped_notebook_uses_the_jobs_modules_not_a_copy() -> None:
    nb = json.loads((REPO / "notebooks" / "featurize_pca.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for module in ("featurize", "images", "outputs", "reduce"):
        assert f"import {module}\n" in code + "\n"
    for used in ("featurize.make_udf(", "reduce.pca(", "outputs.scatter_png(",
                 "outputs.variance_png(", "sc.broadcast("):
        assert used in code
    assert "def " not in code  # nothing of the job redefined here
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_wait_ready_gives_up_as_soon_as_the_server_died() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/"
    t0 = time.monotonic()
    assert not notebook.wait_ready(lambda: notebook.answers(base), alive=lambda: False,
                                   timeout_s=60)
    assert time.monotonic() - t0 < 5
    calls = iter([False, False, True])
    assert notebook.wait_ready(lambda: next(calls), alive=lambda: True, timeout_s=60)
    code = shlex.split(notebook.ready_command(inventory()))
    assert code[:2] == ["/opt/sparkfab/python/bin/python", "-c"]
    assert "http://127.0.0.1:8888/api" in code[2]


# ---- the rendered server config, run here ----------------------------------------------------


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch):
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET,
                             CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


def _get(url: str, method: str = "GET", body: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.timeout(300)
def test_the_server_config_pulls_from_s3_saves_to_s3_and_wants_the_token(
    moto_endpoint: str, tmp_path: Path
) -> None:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="notebooks/old/kept.ipynb", Body=b'{"x": 1}')
    root = tmp_path / "notebooks"
    root.mkdir()
    paths = notebook.Paths(str(tmp_path), str(root), str(tmp_path / "session"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "config.py"
    config.write_text(notebook.render_server_config(inventory(endpoint=moto_endpoint), paths,
                                                    600, port=port))
    env = {**os.environ, "JUPYTER_TOKEN": "t0ken", "HOME": str(tmp_path),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jconfig"),
           "JUPYTER_DATA_DIR": str(tmp_path / "jdata")}
    refused = subprocess.run([sys.executable, "-m", "jupyterlab", f"--config={config}"],
                             env={**env, "JUPYTER_TOKEN": ""}, capture_output=True,
                             text=True, timeout=90)
    assert refused.returncode != 0 and "no JUPYTER_TOKEN" in refused.stderr  # no server
    log = (tmp_path / "server.log").open("wb")
    # On a node it runs as the service user; only this test may run it as root.
    root_ok = ["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", f"--config={config}",
                               *root_ok],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        assert notebook.wait_ready(lambda: notebook.answers(base),
                                   alive=lambda: server.poll() is None, timeout_s=120), \
            (tmp_path / "server.log").read_text()[-2000:]
        assert (root / "old" / "kept.ipynb").read_bytes() == b'{"x": 1}'  # pulled
        assert _get(base + "api/contents") == 403  # no token
        assert _get(base + "api/contents?token=wrong") == 403
        assert _get(base + "api/contents?token=t0ken") == 200
        model = {"type": "notebook", "format": "json", "content": {
            "cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
        assert _get(base + "api/contents/new.ipynb?token=t0ken", "PUT",
                    json.dumps(model).encode()) in (200, 201), \
            (tmp_path / "server.log").read_text()[-3000:]
        saved = s3.get_object(Bucket=BUCKET, Key="notebooks/new.ipynb")["Body"].read()
        assert json.loads(saved)["nbformat"] == 4  # pushed on save
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                                   text=True).stdout if shutil.which("ss") else ""
        assert all(line.split()[3] == f"127.0.0.1:{port}" for line in listening.splitlines())
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
