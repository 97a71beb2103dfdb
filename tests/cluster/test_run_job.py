"""`fab run-job` end to end on the suite's shared cluster (conftest's spark_cluster: 1 master
+ 2 workers installed from staged artifacts), images uploaded with upload-data to moto S3,
the job read and written via s3a.

Slow (TensorFlow runs on shared cores): few small images, and partitions of a few images
so both workers get tasks.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import SHARED_BUCKET, SHARED_CLUSTER, InstalledCluster

from sparkfab import demo_weights, inventory, s3path, samples, spark, submit, transfer
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory
from sparkfab.localcloud import LocalCloud
from sparkfab.remote import Remote

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / demo_weights.DEFAULT_OUT
CLASSES = sorted(samples.CLASSES)[:3]
BUCKET = SHARED_BUCKET
PER_CLASS = 5
# Small batches and partitions: tasks for both workers even with a few images.
JOB_ARGS = ("--weights", str(WEIGHTS), "--k", "3", "--batch-size", "4",
            "--images-per-partition", "3", "--input-size", "96")


@pytest.fixture(scope="module")
def local_cloud(spark_cluster: InstalledCluster) -> LocalCloud:
    return spark_cluster.cloud


@pytest.fixture(scope="module")
def cluster(spark_cluster: InstalledCluster, shared_inventory_dir: Path) -> Inventory:
    """The shared installed cluster, running Spark, with its data bucket."""
    if not WEIGHTS.exists():  # `make test` builds them first; a bare pytest run still works
        demo_weights.build(WEIGHTS)
    return spark_cluster.inv


@pytest.fixture(scope="module")
def images(local_cloud: LocalCloud, cluster: Inventory,
           tmp_path_factory: pytest.TempPathFactory) -> s3path.S3Path:
    """A few generated sample images per class, uploaded the way a user does (upload-data)."""
    made = tmp_path_factory.mktemp("samples")
    samples.generate(made, PER_CLASS)
    src = tmp_path_factory.mktemp("images")
    for label in CLASSES:
        shutil.copytree(made / label, src / label)
    dest = s3path.parse(f"s3://{BUCKET}/images/fruits")
    result = transfer.upload_folder(local_cloud.s3_client(), src, dest, workers=4)
    assert result.uploaded == 3 * PER_CLASS
    return dest


def run(local_cloud: LocalCloud, inv: Inventory, input_: s3path.S3Path, output: str,
        out: io.StringIO | None = None, extra: tuple[str, ...] = (), **kw) -> submit.RunResult:
    base = JOB_ARGS
    if "--pca-from" in extra:  # k comes from the earlier run's basis
        at = base.index("--k")
        base = base[:at] + base[at + 2:]
    req = submit.JobRequest(input_, s3path.parse(output), submit.check_job_args(base + extra))
    with Remote(inv, known_hosts=inventory.known_hosts_path(SHARED_CLUSTER), out=None) as remote:
        return submit.run_on_cluster(inv, remote, local_cloud.s3_client(), req,
                                     Path(inventory.INVENTORY_DIR) / "runs",
                                     out=out or io.StringIO(), **kw)


def keys_under(local_cloud: LocalCloud, prefix: str) -> set[str]:
    listed = local_cloud.s3_client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix):] for o in listed.get("Contents", [])}


def test_run_job_featurizes_and_reduces_via_s3a_on_both_workers(
    local_cloud: LocalCloud, cluster: Inventory, images: s3path.S3Path
) -> None:
    out = io.StringIO()
    t0 = time.monotonic()
    result = run(local_cloud, cluster, images, f"s3://{BUCKET}/runs/r1", out)
    print(f"\nfigure: run-job on the local cloud: {time.monotonic() - t0:.0f}s")
    counts = result.manifest["counts"]
    assert (counts["input"], counts["ok"], counts["failed"]) == (3 * PER_CLASS, 3 * PER_CLASS, 0)
    assert result.manifest["pca"]["k"] == 3
    store = result.manifest["store"]
    assert store["path"] == f"s3a://{BUCKET}/features"
    assert (store["reused"], store["featurized_now"]) == (0, 3 * PER_CLASS)
    assert any(k.startswith("fingerprint=") and "/_commits/" in k
               for k in keys_under(local_cloud, "features/"))
    assert keys_under(local_cloud, "runs/r1/") >= {
        "manifest.json", "pca_matrix.csv", "errors.csv", "pca_scatter.png",
        "explained_variance.png", "_SUCCESS"}
    assert any(k.startswith("features.parquet/") for k in keys_under(local_cloud, "runs/r1/"))
    workers = {n.private_ip for n in cluster.workers}
    assert set(result.driver.tasks_by_host) >= workers, out.getvalue()
    # The weights file was staged once in the bucket and read by the driver from there.
    assert result.manifest["weights"]["spec"].startswith(f"s3a://{BUCKET}/sparkfab/weights/")
    assert "executor 0 on" in out.getvalue()


def test_bad_inputs_fail_with_one_line_and_leave_nothing_complete(
    local_cloud: LocalCloud, cluster: Inventory, images: s3path.S3Path
) -> None:
    with pytest.raises(UserError, match="is empty or does not exist"):
        run(local_cloud, cluster, s3path.parse(f"s3://{BUCKET}/no/such/prefix"),
            f"s3://{BUCKET}/runs/missing")
    with pytest.raises(UserError, match="outside the cluster's bucket"):
        run(local_cloud, cluster, images, "s3://someone-elses-bucket/runs/x")
    # Files, but no image: only the job itself can tell; it must fail cleanly.
    local_cloud.s3_client().put_object(Bucket=BUCKET, Key="texts/readme.txt", Body=b"hi")
    with pytest.raises(UserError) as err:
        run(local_cloud, cluster, s3path.parse(f"s3://{BUCKET}/texts"),
            f"s3://{BUCKET}/runs/empty")
    assert err.value.message.startswith("the job failed on the cluster (exit 2): error: no "
                                        ".jpg/.jpeg/.png files under")
    assert keys_under(local_cloud, "runs/empty") == set()
    assert not any(k.startswith("_tmp-") for k in keys_under(local_cloud, "runs/"))


def test_killing_a_worker_mid_job_still_gives_the_same_complete_output(
    local_cloud: LocalCloud, cluster: Inventory, images: s3path.S3Path
) -> None:
    """The worker daemon and the executors it launched die at once (SIGKILL), as when a
    node fails; its supervisor brings the daemon back. Killing only the supervised pid is
    not enough: the JVMs under it live on and the job never notices (seen on this cloud)."""
    victim = cluster.workers[1]
    killed = threading.Event()
    featurizing = threading.Event()
    out = io.StringIO()
    known = inventory.known_hosts_path(SHARED_CLUSTER)
    with Remote(cluster, known_hosts=known, out=None) as remote:
        pid = spark.daemon_pid(remote, victim)
        assert pid is not None
        # The daemon's whole process tree, by pid: the supervised launcher (runuser), the
        # worker JVM under it and the executor JVMs that JVM launched.
        kill = ("tree() { for c in $(pgrep -P \"$1\"); do tree \"$c\"; done; echo \"$1\"; }; "
                f"kill -9 $(tree {pid})")

        class Watch(io.StringIO):
            """Kills the worker as soon as the first featurize task is done."""

            def write(self, text: str) -> int:
                out.write(text)
                if "[featurize_pca] featurize" in text:
                    featurizing.set()
                elif featurizing.is_set() and not killed.is_set() and "tasks done" in text:
                    killed.set()
                    remote.run(victim, kill, step="kill", echo=False, timeout=30)
                return len(text)

        # --refeaturize: the store holds every image since r1, and this run must featurize.
        result = run(local_cloud, cluster, images, f"s3://{BUCKET}/runs/r2", Watch(),
                     extra=("--refeaturize",))
    assert killed.is_set(), out.getvalue()
    assert any(lost.endswith("@" + victim.private_ip) for lost in result.driver.lost_executors), \
        out.getvalue()
    counts = result.manifest["counts"]
    # The same counts as an undisturbed run: every sample image featurized once.
    assert (counts["input"], counts["ok"], counts["failed"]) == (3 * PER_CLASS, 3 * PER_CLASS, 0)
    assert "_SUCCESS" in keys_under(local_cloud, "runs/r2/")


def test_an_output_that_gains_an_object_before_the_commit_is_left_alone_on_s3a(
    local_cloud: LocalCloud, cluster: Inventory, images: s3path.S3Path
) -> None:
    """Another writer puts an object under --output while the job writes: the commit
    (Hadoop's FileSystem on s3a) must refuse, delete nothing, and keep the finished run."""
    s3 = local_cloud.s3_client()
    intruded = threading.Event()
    out = io.StringIO()

    class Watch(io.StringIO):
        """Writes someone else's object under --output once the job starts its writes."""

        def write(self, text: str) -> int:
            out.write(text)
            if "[featurize_pca] write" in text and not intruded.is_set():
                s3.put_object(Bucket=BUCKET, Key="runs/r3/theirs.csv", Body=b"not yours\n")
                intruded.set()
            return len(text)

    with pytest.raises(UserError) as err:
        run(local_cloud, cluster, images, f"s3://{BUCKET}/runs/r3", Watch())
    assert intruded.is_set(), out.getvalue()
    assert (f"error: --output s3a://{BUCKET}/runs/r3 gained files while the run was working "
            "(theirs.csv); nothing there was deleted or overwritten") in err.value.message
    assert keys_under(local_cloud, "runs/r3/") == {"theirs.csv"}
    body = s3.get_object(Bucket=BUCKET, Key="runs/r3/theirs.csv")["Body"].read()
    assert body == b"not yours\n"
    kept = {k.split("/", 1)[0] for k in keys_under(local_cloud, "runs/_tmp-")}
    assert len(kept) == 1, kept
    run_files = keys_under(local_cloud, f"runs/_tmp-{kept.pop()}/")
    assert "pca_matrix.csv" in run_files and any(k.startswith("features.parquet/")
                                                 for k in run_files)


def test_a_second_run_reuses_the_feature_store_in_s3(
    local_cloud: LocalCloud, cluster: Inventory, images: s3path.S3Path
) -> None:
    result = run(local_cloud, cluster, images, f"s3://{BUCKET}/runs/r4",
                 extra=("--pca-from", f"s3://{BUCKET}/runs/r1"))
    store = result.manifest["store"]
    assert (store["reused"], store["featurized_now"]) == (3 * PER_CLASS, 0)
    assert store["size"]["images"] == 3 * PER_CLASS
    assert result.manifest["pca"]["basis"]["run"] == f"s3a://{BUCKET}/runs/r1"
