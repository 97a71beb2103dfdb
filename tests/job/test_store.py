"""job/store.py in a local SparkSession: listing from the file index, reading only what is
new, the commit protocol under two writers at once, duplicates, the fingerprint."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import store

pytestmark = pytest.mark.slow

# The last two need select_files' hex literal: a quote, and a "${...}" the SQL parser
# would substitute (spark.app.name) even inside a raw literal.
ODD_NAMES = ["a/plain.jpg", "café au lait/ä b.JPG", "x/a [1]%20.png", "x/semi; colon=1.jpg",
             "y/plain.jpg", "q/it's a \\' quote.jpg", "v/${spark.app.name}.jpg"]


def _files(spark, root: Path):
    return spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(root))


def _tree(root: Path) -> None:
    """ODD_NAMES, each of its own size and modification time, and an empty file."""
    for i, name in enumerate(ODD_NAMES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * (10 + i))
        os.utime(root / name, ns=(1_700_000_000_000_000_000 + i * 10**9,) * 2)
    (root / "a" / "empty.jpg").write_bytes(b"")


def test_the_index_listing_matches_spark_and_its_fallback(spark, tmp_path: Path,
                                                          monkeypatch) -> None:
    _tree(tmp_path)
    files = _files(spark, tmp_path)
    listed = store.list_index(files)
    scanned = {r["path"]: (r["length"], r["ms"]) for r in files.selectExpr(
        "path", "length", "unix_millis(modificationTime) AS ms").collect()}
    by_path = {f.path: (f.size, f.mtime_ms) for f in listed}
    # The scan skips the zero-byte file; the index (and so the job) still sees it.
    assert set(by_path) - set(scanned) == {f"file:{tmp_path}/a/empty.jpg"}
    assert {p: by_path[p] for p in scanned} == scanned
    monkeypatch.setattr(store, "_STATUS", store.re.compile("will not match"))
    assert store.list_index(files) == listed


def test_select_files_reads_only_the_wanted_files(spark, tmp_path: Path) -> None:
    _tree(tmp_path)
    # The same modification time as a wanted file: pruning cannot tell them apart, the
    # path can.
    twin = tmp_path / "y" / "twin.jpg"
    twin.write_bytes((tmp_path / "a" / "plain.jpg").read_bytes())
    stat = (tmp_path / "a" / "plain.jpg").stat()
    os.utime(twin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    files = _files(spark, tmp_path)
    listed = {f.path: f for f in store.list_index(files)}
    wanted = [listed[f"file:{tmp_path}/{n}"] for n in ("a/plain.jpg", "x/a [1]%20.png",
                                                        *ODD_NAMES[-2:])]
    selected = store.select_files(files, wanted).select("path", "content")
    rows = selected.collect()
    assert sorted(r["path"] for r in rows) == sorted(f.path for f in wanted)
    plan = selected._jdf.queryExecution().executedPlan()
    read = []

    def walk(node) -> None:
        metrics = node.metrics()
        if metrics.contains("numFiles"):
            read.append(int(metrics.apply("numFiles").value()))
        children = node.children().iterator()
        while children.hasNext():
            walk(children.next())

    walk(plan)
    assert read == [5]  # the four wanted files and the twin, of nine


def test_feature_rows_run_the_model_once_per_image_in_the_stores_columns(
        spark, tmp_path: Path) -> None:
    import featurize
    from pyspark.sql.types import _parse_datatype_string

    _tree(tmp_path)
    udf = featurize.make_udf(spark.sparkContext.broadcast(b"never read"), 32, 4, 1)
    rows = featurize.feature_rows(_files(spark, tmp_path), udf)
    wanted = _parse_datatype_string(store.SCHEMA)
    assert [(f.name, f.dataType) for f in rows.schema.fields] == [
        (f.name, f.dataType) for f in wanted.fields]
    # Both fields of the UDF's struct come from one evaluation: one Python UDF in the plan.
    plan = str(rows._jdf.queryExecution().executedPlan().toString())
    assert plan.count("ArrowEvalPython") == 1
    assert "pythonUDF0" in plan and "pythonUDF1" not in plan


@pytest.mark.parametrize("text", ["café <&> \"q\" ' \\ \t end", "odd \ufffe char"])
def test_observed_metrics_come_back_whole(spark, text: str, monkeypatch) -> None:
    """Through the XML file; U+FFFE, which XML 1.0 cannot hold, through py4j instead."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    seen = Observation(f"test-observed-{len(text)}")
    spark.range(3).observe(seen, F.to_json(F.collect_list(F.lit(text))).alias("keys"),
                           F.count("*").cast("string").alias("n")).collect()
    through_py4j = []
    real_get = Observation.get.fget
    monkeypatch.setattr(Observation, "get", property(
        lambda self: through_py4j.append(1) or real_get(self)))
    metrics = store._observed(spark, seen)
    assert sorted(metrics) == ["keys", "n"] and metrics["n"] == "3"
    assert json.loads(metrics["keys"]) == [text] * 3
    assert through_py4j == ([1] if "\ufffe" in text else [])


def _rows(spark, paths: list[str], value: float, error_at: int | None = None):
    data = [(p, 10, 1000 + i, None if i == error_at else [value + i] * 4,
             "bad" if i == error_at else None) for i, p in enumerate(paths)]
    return spark.createDataFrame(data, store.SCHEMA)


def test_two_writers_at_once_and_a_crashed_one_leave_a_consistent_store(
        spark, tmp_path: Path, monkeypatch) -> None:
    fs = store.FeatureStore(spark, str(tmp_path / "features"), "tensorflow-test", {"x": 1})
    fs.append(_rows(spark, ["p0", "p1"], 0.0, error_at=1), "b0", {})
    # Both writers hold their data written and not yet committed at the same moment.
    both_written = threading.Barrier(2, timeout=120)
    rename = store.outputs.Store.rename

    def rename_when_both_wrote(self, src: str, dst: str) -> None:
        both_written.wait()
        assert fs.committed() == ["b0"]  # neither is visible yet
        assert set(fs.keys()) == {("p0", 10, 1000), ("p1", 10, 1001)}
        rename(self, src, dst)

    monkeypatch.setattr(store.outputs.Store, "rename", rename_when_both_wrote)
    errors: list[BaseException] = []

    def writer(batch: str, paths: list[str], value: float) -> None:
        try:
            fs.append(_rows(spark, paths, value), batch, {})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=("b1", ["p2", "p3"], 2.0)),
               threading.Thread(target=writer, args=("b2", ["p3", "p4"], 3.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    monkeypatch.undo()
    # A writer that died mid-batch, and one that died between its rename and its commit.
    (tmp_path / "features" / "fingerprint=tensorflow-test" / "_tmp-batch=b9").mkdir()
    _rows(spark, ["p9"], 9.0).write.parquet(fs.files.uri("batch=b8"))

    assert fs.committed() == ["b0", "b1", "b2"]
    keys = fs.keys()
    assert set(keys) == {(f"p{i}", 10, 1000 + j) for i, j in
                         [(0, 0), (1, 1), (2, 0), (3, 1), (3, 0), (4, 1)]}
    # p3 came with another mtime from each writer: two keys. The same key twice: the
    # greater batch id wins.
    fs.append(_rows(spark, ["p2"], 7.0), "b3", {})
    assert fs.keys()[("p2", 10, 1000)] == store.Stored("b3", True)
    assert fs.keys()[("p1", 10, 1001)] == store.Stored("b0", False)
    read = fs.read({"p2": "b3", "p4": "b2", "p1": "b0"}).toPandas().set_index("path")
    assert list(read.loc["p2", "features"]) == [7.0] * 4
    assert list(read.loc["p4", "features"]) == [4.0] * 4
    assert read.loc["p1", "error"] == "bad" and read.loc["p1", "features"] is None
    assert fs.size(keys)["batches"] == 4
    # What a user reads with pandas: committed batches, plus the uncommitted b8 (the
    # README says to filter on _commits for a strict view); never the _tmp one.
    table = pd.read_parquet(tmp_path / "features")
    assert set(table["batch"].astype(str)) == {"b0", "b1", "b2", "b3", "b8"}


def test_keys_come_from_the_key_files_as_from_the_batches(spark, tmp_path: Path) -> None:
    """A run learns the store's keys from one small file per batch, without a Spark job;
    they are the keys the batch itself holds, and a batch committed without such a file
    (an older store) is read from its Parquet instead."""
    fs = store.FeatureStore(spark, str(tmp_path / "features"), "onnx-test", {"x": 1})
    added = fs.append(_rows(spark, ["p0", "p1", "p2"], 1.0, error_at=2), "b0", {})
    fs.append(_rows(spark, ["p2", "p3"], 2.0), "b1", {})
    key_files = tmp_path / "features" / "fingerprint=onnx-test" / store.KEYS
    assert sorted(p.name for p in key_files.iterdir()) == ["b0.parquet", "b1.parquet"]
    expected = {("p0", 10, 1000): store.Stored("b0", True),
                ("p1", 10, 1001): store.Stored("b0", True),
                ("p2", 10, 1002): store.Stored("b0", False),
                ("p2", 10, 1000): store.Stored("b1", True),
                ("p3", 10, 1001): store.Stored("b1", True)}
    from_files = fs.keys()
    assert from_files == expected
    assert added == {k: v for k, v in expected.items() if v.batch == "b0"}
    # The same, read from the batches themselves.
    assert {(p, s, m): store.Stored(b, ok) for p, s, m, b, ok in
            fs._read_keys(fs.committed())} == expected
    (key_files / "b0.parquet").unlink()
    assert fs.keys() == expected


def test_the_fingerprint_follows_weights_size_and_engine_only() -> None:
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    name, description = store.fingerprint(weights, 224, "tensorflow")
    assert name.startswith("tensorflow-") and description["input_size"] == 224
    # The installed TensorFlow is the tensorflow-cpu distribution: its version counts.
    assert description["versions"]["tensorflow"] is not None
    assert store.fingerprint([w.copy() for w in weights], 224, "tensorflow")[0] == name
    changed = [weights[0].copy(), weights[1].copy()]
    changed[1][0] = np.nextafter(np.float32(1), np.float32(2))
    assert store.fingerprint(changed, 224, "tensorflow")[0] != name
    assert store.fingerprint([weights[0].reshape(3, 2), weights[1]], 224, "tensorflow")[0] != name
    assert store.fingerprint(weights, 160, "tensorflow")[0] != name
    assert store.fingerprint(weights, 224, "onnx")[0].startswith("onnx-")


def test_default_locations() -> None:
    assert store.default_location("s3a://bucket/runs/r1") == "s3a://bucket/features"
    assert store.default_location("/data/runs/r1").endswith("/.cache/features")


def test_an_images_features_do_not_depend_on_its_batch() -> None:
    """A batch of one takes another path in TF (different last bits); featurize pads it."""
    import featurize

    weights = featurize.build_backbone(32).get_weights()
    infer = featurize._build_infer_fn(weights, 32, 1)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    together = featurize._run(infer, (pixels, [None] * 5), 5)
    alone = [featurize._run(infer, (pixels[i:i + 1], [None]), 1) for i in range(5)]
    for i in range(5):
        assert np.array_equal(alone[i]["features"][0], together["features"][i])
