"""`fab notebook`: JupyterLab on the master, as the Spark service user, through an SSH tunnel.

The server binds the master's 127.0.0.1 only and asks for a token; the operator reaches it
through `ssh -L 127.0.0.1:LOCAL:127.0.0.1:PORT` (sparkfab/tunnel.py, as `fab ui`). Its
kernels inherit the launcher's environment (templates/notebook-env.sh.j2): the cluster's
spark-env.sh, SPARK_HOME, and PYSPARK_SUBMIT_ARGS naming the master and the driver's
private address, so `SparkSession.builder.getOrCreate()` in a cell gets the cluster's
executors; the job's modules (job/) are on the kernel's PYTHONPATH and go to the executors
as --py-files. Only the service user can read spark-defaults.conf and so the RPC secret.

Notebooks are kept in the cluster's bucket under NOTEBOOKS_PREFIX (they outlive `fab
teardown`, which keeps the bucket): the server pulls them when it starts and pushes each
save at once (a post-save hook, templates/jupyter-server-config.py.j2) with pyarrow's S3
client, which the nodes have and which uses the instance role. The shipped notebooks
(notebooks/) are put there first unless a copy, maybe edited, is already there.

Cost: the idle guard counts Spark applications. A kernel without a SparkSession is none,
so it does not keep the cluster up; a kernel holding one is, until Jupyter culls it after
the idle timeout with no cell run (its SparkContext ends with it), and the server exits
after as long with no kernel and no request. Ctrl-C here stops the server and the tunnel.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import shlex
import sys
import time
import urllib.error
import urllib.request
import webbrowser
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sparkfab import pidgroup, ports, submit, tunnel
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory
from sparkfab.layout import LAYOUT, Layout
from sparkfab.render import render
from sparkfab.transfer import s3_error

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS_PREFIX = "notebooks/"  # in the cluster's bucket
APP_NAME = "sparkfab-notebook"
LAUNCHER = "notebook-env.sh"
SERVER_CONFIG = "jupyter_server_config.py"
START_TIMEOUT_S = 120.0  # JupyterLab imports for ~10-20 s on small shared cores


@dataclass(frozen=True)
class Paths:
    """Where one server's files live on the master."""

    root: str  # the service user's notebook folder
    notebooks: str  # the server's root_dir: what the browser shows
    session: str  # launcher, server config, token, job modules, pid, log

    @classmethod
    def of(cls, layout: Layout = LAYOUT) -> Paths:
        base = layout.notebook_dir
        return cls(base, f"{base}/notebooks", f"{base}/session")

    @property
    def launcher(self) -> str:
        return f"{self.session}/{LAUNCHER}"

    @property
    def pid(self) -> str:
        return f"{self.session}/server.pid"

    @property
    def log(self) -> str:
        return f"{self.session}/server.log"


def submit_args(inv: Inventory, paths: Paths, layout: Layout = LAYOUT) -> str:
    """PYSPARK_SUBMIT_ARGS for a kernel's SparkSession: the same driver settings as
    `fab submit`, the job's modules for the executors."""
    from sparkfab import spark

    argv = ["--master", spark.master_url(inv), "--name", APP_NAME]
    for conf in submit.driver_confs(inv, layout):
        argv += ["--conf", conf]
    argv += ["--py-files", f"{paths.session}/job.zip", "pyspark-shell"]
    return " ".join(shlex.quote(a) for a in argv)


def render_launcher(inv: Inventory, paths: Paths, layout: Layout = LAYOUT) -> str:
    return render(LAUNCHER, cluster=inv.cluster, layout=layout.as_dict(), session=paths.session,
                  root_dir=paths.notebooks, submit_args=submit_args(inv, paths, layout),
                  bucket=inv.bucket or "")


def render_server_config(inv: Inventory, paths: Paths, idle_timeout_s: int,
                         port: int = ports.NOTEBOOK) -> str:
    if not inv.bucket:
        raise UserError(f"cluster {inv.cluster} records no bucket to keep notebooks in",
                        "re-run `fab provision` (it creates the cluster's bucket)")
    return render("jupyter-server-config.py", cluster=inv.cluster, bucket=inv.bucket,
                  prefix=NOTEBOOKS_PREFIX, region=inv.region,
                  endpoint_url=inv.endpoint_url or "", root_dir=paths.notebooks,
                  idle_timeout_s=idle_timeout_s, port=port)


def session_bundle(inv: Inventory, paths: Paths, idle_timeout_s: int) -> bytes:
    """Launcher, server config and the job's modules: what one start ships."""
    buf = io.BytesIO()
    files = {LAUNCHER: render_launcher(inv, paths).encode(),
             SERVER_CONFIG: render_server_config(inv, paths, idle_timeout_s).encode(),
             "job.zip": submit.package_job()}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _sudo(inv: Inventory) -> str:
    return "" if inv.ssh_user == "root" else "sudo -n "


def prepare_command(inv: Inventory, staged: str, paths: Paths,
                    layout: Layout = LAYOUT) -> str:
    """Folders (0700, the service user's), the bundle unpacked, job.zip unpacked for the
    kernel's imports; a server left from an earlier start is stopped first."""
    q = shlex.quote
    as_user = submit.as_service_user(inv.ssh_user, layout)
    user = q(layout.service_user)
    py = q(layout.python)
    return " && ".join([
        f"{{ {stop_command(inv, paths)}; }}",
        f"{as_user}sh -c {q(f'umask 077 && mkdir -p {q(paths.notebooks)} {q(paths.session)}')}",
        f"{_sudo(inv)}install -o {user} -g {user} -m 0600 {q(staged)} "
        f"{q(paths.session + '/bundle.zip')}",
        f"rm -f {q(staged)}",
        f"{as_user}{py} -m zipfile -e {q(paths.session + '/bundle.zip')} {q(paths.session)}",
        f"{as_user}rm -rf {q(paths.session + '/job')}",
        f"{as_user}{py} -m zipfile -e {q(paths.session + '/job.zip')} "
        f"{q(paths.session + '/job')}",
    ])


def token_command(inv: Inventory, paths: Paths, layout: Layout = LAYOUT) -> str:
    """Writes one line from stdin to the token file, 0600: never on a command line."""
    inner = f"umask 077 && head -n 1 > {shlex.quote(paths.session + '/token')}"
    return f"{submit.as_service_user(inv.ssh_user, layout)}sh -c {shlex.quote(inner)}"


def start_command(inv: Inventory, paths: Paths, layout: Layout = LAYOUT) -> str:
    """The server, detached in its own session (one `kill -- -PGID` stops it and its
    kernels), logging to the session folder; returns at once."""
    q = shlex.quote
    server = (f"{q(paths.launcher)} {q(layout.python)} -m jupyterlab "
              f"--config={q(paths.session + '/' + SERVER_CONFIG)}")
    inner = (f"chmod 0700 {q(paths.launcher)} && "
             f"setsid sh -c {q(f'echo $$ > {q(paths.pid)}; exec {server}')} "
             f"> {q(paths.log)} 2>&1 < /dev/null &")
    return f"{submit.as_service_user(inv.ssh_user, layout)}sh -c {q(inner)}"


def stop_command(inv: Inventory, paths: Paths) -> str:
    """Stops the server's process group if its pid file names one; quiet if not."""
    return pidgroup.stop_command(_sudo(inv), paths.pid, remove_pidfile=True)


def alive_command(inv: Inventory, paths: Paths) -> str:
    pidfile = shlex.quote(paths.pid)
    return f"{_sudo(inv)}sh -c {shlex.quote(f'kill -0 $(cat {pidfile})')}"


def log_tail_command(inv: Inventory, paths: Paths, lines: int = 15) -> str:
    return f"{_sudo(inv)}tail -n {int(lines)} {shlex.quote(paths.log)}"


def execute_command(inv: Inventory, paths: Paths, notebook: str, output: str,
                    timeout_s: int = 1800, layout: Layout = LAYOUT) -> str:
    """Run a notebook in the server's root headless (nbclient), in the same environment the
    server gives its kernels; the executed copy is written beside it."""
    q = shlex.quote
    code = (
        "import sys, nbformat; from nbclient import NotebookClient; "
        "nb = nbformat.read(sys.argv[1], as_version=4); "
        f"NotebookClient(nb, timeout={int(timeout_s)}, kernel_name='python3').execute(); "
        "nbformat.write(nb, sys.argv[2])"
    )
    return (f"{submit.as_service_user(inv.ssh_user, layout)}{q(paths.launcher)} "
            f"{q(layout.python)} -c {q(code)} {q(notebook)} {q(output)}")


def with_parameters(nb: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a notebook (nbformat JSON) with `values` assigned in a cell right after
    its `parameters`-tagged cell, as papermill does: the headless runs set their inputs."""
    cells = list(nb["cells"])
    at = next((i for i, c in enumerate(cells)
               if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if at is None:
        raise UserError("the notebook has no cell tagged `parameters`",
                        "tag the cell that sets its inputs")
    source = "# injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    cells.insert(at + 1, {"cell_type": "code", "id": "injected-parameters",
                          "metadata": {"tags": ["injected-parameters"]},
                          "execution_count": None, "outputs": [], "source": source})
    return {**nb, "cells": cells}


# ---- the bucket ---------------------------------------------------------------------------


def seed_notebooks(s3: Any, bucket: str, shipped: Path = SHIPPED_DIR) -> list[str]:
    """The shipped notebooks into the bucket, each only where no copy is (a user's edits
    are never overwritten); returns the keys it wrote."""
    written = []
    for path in sorted(shipped.glob("*.ipynb")):
        key = NOTEBOOKS_PREFIX + path.name
        try:
            try:
                s3.head_object(Bucket=bucket, Key=key)
                continue
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchKey"):
                    raise
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        except (ClientError, BotoCoreError) as exc:
            raise s3_error(exc, bucket, f"put {path.name} in the bucket") from exc
        written.append(key)
    return written


# ---- the session --------------------------------------------------------------------------


@dataclass
class Server:
    """A running server, reached through its tunnel."""

    url: str  # http://127.0.0.1:LOCAL/lab?token=...
    base: str  # http://127.0.0.1:LOCAL/
    token: str
    local_port: int
    tunnel: Any  # the ssh Popen


def ready_command(inv: Inventory, layout: Layout = LAYOUT,
                  port: int = ports.NOTEBOOK) -> str:
    """Succeeds once the server answers on the master's loopback (/api needs no token and
    tells only the version): the tunnel opens after it, so ssh never reports a refused
    forward while JupyterLab is still importing."""
    code = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{int(port)}/api', timeout=5)"
    return f"{shlex.quote(layout.python)} -c {shlex.quote(code)}"


def wait_ready(check: Callable[[], bool], alive: Callable[[], bool],
               timeout_s: float = START_TIMEOUT_S,
               clock: Callable[[], float] = time.monotonic) -> bool:
    """True once `check()` passes; False as soon as the server died, or when time ran out."""
    deadline = clock() + timeout_s
    while clock() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(1.0)
    return False


def answers(base: str) -> bool:
    """The server answers /api at `base` (through the tunnel)."""
    try:
        with urllib.request.urlopen(base + "api", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def session(
    inv: Inventory, remote: Any, s3: Any, idle_timeout_s: int, local_port: int = ports.NOTEBOOK,
    out: Callable[[str], None] = print,
) -> Any:
    """Start the server and its tunnel; yield a Server; stop both on the way out."""
    paths = Paths.of()
    master = inv.master
    conn = remote.connection(master)
    for key in seed_notebooks(s3, inv.bucket or "") if inv.bucket else []:
        out(f"put the shipped {key.rsplit('/', 1)[-1]} in s3://{inv.bucket}/{key}")
    staged = f"/tmp/sparkfab-notebook-{secrets.token_hex(4)}.zip"
    conn.put(io.BytesIO(session_bundle(inv, paths, idle_timeout_s)), staged)
    prep = conn.run(prepare_command(inv, staged, paths), hide=True, warn=True, in_stream=False)
    if not prep.ok:
        raise UserError(
            f"could not prepare the notebook folder on {master.name}: "
            f"{(prep.stderr or prep.stdout).strip().splitlines()[-1:] or ['?']}",
            "is the cluster installed? `fab provision` installs Spark and the service user",
        )
    token = secrets.token_urlsafe(32)
    conn.run(token_command(inv, paths), hide=True, in_stream=io.StringIO(token + "\n"))
    conn.run(start_command(inv, paths), hide=True, in_stream=False)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            conn.run(stop_command(inv, paths), hide=True, warn=True, in_stream=False)

    def alive() -> bool:
        return bool(conn.run(alive_command(inv, paths), hide=True, warn=True,
                             in_stream=False).ok)

    try:
        ready = wait_ready(
            lambda: bool(conn.run(ready_command(inv), hide=True, warn=True,
                                  in_stream=False).ok), alive)
        if not ready:
            tail = conn.run(log_tail_command(inv, paths), hide=True, warn=True,
                            in_stream=False).stdout.strip()
            raise UserError(
                f"JupyterLab did not start on {master.name}; its log ends:\n{tail}",
                "`fab ssh` and read " + paths.log,
            )
        local = tunnel.plan_one("JupyterLab", local_port, tunnel.LOOPBACK, ports.NOTEBOOK)
        with tunnel.opened(inv, [local]) as proc:
            base = local.url
            if not wait_ready(lambda: answers(base), lambda: proc.poll() is None, 30):
                raise UserError(f"JupyterLab runs on {master.name} but does not answer "
                                "through the SSH tunnel",
                                "`fab ssh` checks SSH; is TCP forwarding allowed there?")
            yield Server(f"{base}lab?token={token}", base, token, local.local_port, proc)
    finally:
        with contextlib.suppress(Exception):
            stop()


def run(settings: Any, local_port: int = ports.NOTEBOOK, browser: bool = True,
        out: Callable[[str], None] = print) -> None:
    """`fab notebook`: until Ctrl-C (or the tunnel or the server ends)."""
    from sparkfab import cluster

    inv = cluster.require(settings)
    s3 = cluster.s3_client(settings, inv)
    idle_s = int(getattr(settings, "idle_timeout_minutes", 0) or 60) * 60
    paths = Paths.of()
    with cluster.remote(inv, out=None) as remote, \
            session(inv, remote, s3, idle_s, local_port, out) as server:
        out(f"JupyterLab on {inv.master.name}, as {LAYOUT.service_user}, on this machine only:")
        out(f"  {server.url}")
        out(f"notebooks are kept in s3://{inv.bucket}/{NOTEBOOKS_PREFIX} (each save); "
            f"kernels idle {idle_s // 60} min are stopped; Ctrl-C stops the server")
        if browser:
            with contextlib.suppress(Exception):
                webbrowser.open(server.url)
        conn = remote.connection(inv.master)
        try:
            while server.tunnel.poll() is None:
                time.sleep(5)
                if not conn.run(alive_command(inv, paths), hide=True, warn=True,
                                in_stream=False).ok:
                    out("the server on the master has stopped (idle, or ended there)")
                    return
            out(f"the SSH tunnel ended (exit {server.tunnel.returncode})")
        except KeyboardInterrupt:
            out("stopping JupyterLab and the tunnel")
    sys.stdout.flush()
