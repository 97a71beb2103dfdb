"""The job end to end in Spark local mode: good images plus every kind of bad input.

One run (module fixture, the default onnx engine) with the executors forbidden to open
model files, connect out or import TensorFlow; every assertion reads what a user would
read: manifest.json, the CSVs, Parquet, the PNGs. A second run of the same input with
`--engine tensorflow` is the reference both engines must agree with.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sparkfab import localjob, samples
from sparkfab.errors import UserError

pytestmark = pytest.mark.slow

FORBID_DIR = Path(__file__).parent / "forbid_model_files"
PER_CLASS = 4
INPUT_SIZE = 96
IMAGES_PER_PARTITION = 8  # several tasks per worker: the model must survive across them
CORES = 2

# name -> expected fragment of the reason in errors.csv
BAD = {
    "bad/zero.jpg": "empty file",
    "bad/truncated.jpg": "corrupt image",
    "bad/text.jpg": "not an image",
}
ODD_BUT_GOOD = [
    "odd/gray.png", "odd/cmyk.jpg", "odd/alpha.png", "odd/large.jpeg",
    "café au lait/ä b c.JPG",
]
SKIPPED = ["notes.txt", "odd/readme.md"]


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def make_input(root: Path) -> None:
    samples.generate(root, PER_CLASS)
    (root / samples.STAMP).unlink()  # a hidden file Spark skips anyway; keep counts exact
    for rel in [*BAD, *ODD_BUT_GOOD, *SKIPPED]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    apple = samples.render("apple", 0)
    (root / "bad/zero.jpg").write_bytes(b"")
    (root / "bad/truncated.jpg").write_bytes(_jpeg(apple)[:600])
    (root / "bad/text.jpg").write_text("this is not a picture\n")
    apple.convert("L").save(root / "odd/gray.png")
    apple.convert("CMYK").save(root / "odd/cmyk.jpg")
    rgba = apple.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "odd/alpha.png")
    apple.resize((4000, 3000)).save(root / "odd/large.jpeg", quality=80)
    samples.render("lime", 1).save(root / "café au lait/ä b c.JPG")
    (root / "notes.txt").write_text("not an image\n")
    (root / "odd/readme.md").write_text("# not an image\n")


def _run_job(base: Path, weights: Path, name: str, engine: str | None) -> dict:
    """One local-mode run over base/input with the executors' forbidding hook."""
    log = base / f"forbid-{name}.log"
    opts = localjob.JobOptions(
        input=str(base / "input"), output=str(base / "runs" / name),
        weights=str(weights), engine=engine, input_size=INPUT_SIZE,
        images_per_partition=IMAGES_PER_PARTITION, run_id=name,
        features=str(base / "features" / name))
    manifest = localjob.run_local(opts, cores=CORES, extra_conf={
        "spark.executorEnv.PYTHONPATH": str(FORBID_DIR),
        "spark.executorEnv.SPARKFAB_FORBID_LOG": str(log),
        # The default engine's executors must not even import TensorFlow.
        "spark.executorEnv.SPARKFAB_FORBID_TENSORFLOW": "1" if engine is None else "0",
    })
    return {"manifest": manifest, "out": Path(opts.output), "log": log, "base": base}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_weights_file: Path) -> dict:
    base = tmp_path_factory.mktemp("job")
    make_input(base / "input")
    return _run_job(base, demo_weights_file, "r1", engine=None)  # the default: onnx


@pytest.fixture(scope="module")
def tf_run(run: dict, demo_weights_file: Path) -> dict:
    return _run_job(run["base"], demo_weights_file, "r-tf", engine="tensorflow")


def test_counts_add_up(run: dict) -> None:
    c = run["manifest"]["counts"]
    good = PER_CLASS * len(samples.CLASSES) + len(ODD_BUT_GOOD)
    assert c == {"input": good + len(BAD), "ok": good, "failed": len(BAD),
                 "skipped": len(SKIPPED), "files_seen": good + len(BAD) + len(SKIPPED)}
    assert c["input"] == c["ok"] + c["failed"]


def test_each_bad_input_is_listed_with_its_reason(run: dict) -> None:
    rows = list(csv.DictReader((run["out"] / "errors.csv").open(encoding="utf-8")))
    by_name = {r["path"].split("/input/", 1)[1]: r["reason"] for r in rows}
    assert set(by_name) == set(BAD)
    for name, fragment in BAD.items():
        assert fragment in by_name[name], (name, by_name[name])


def test_pca_matrix_csv_has_one_row_per_ok_image_and_2_plus_k_columns(run: dict) -> None:
    m = run["manifest"]
    k = m["pca"]["k"]
    table = pd.read_csv(run["out"] / "pca_matrix.csv")
    assert list(table.columns) == ["path", "label"] + [f"pc_{i}" for i in range(1, k + 1)]
    assert table.shape == (m["counts"]["ok"], 2 + k)
    assert table[[f"pc_{i}" for i in range(1, k + 1)]].notna().all().all()
    assert "café au lait" in set(table["label"])
    assert any(p.endswith("café au lait/ä b c.JPG") for p in table["path"])
    assert set(samples.CLASSES) <= set(table["label"])


def test_explained_variance_is_sane_and_reaches_the_target(run: dict) -> None:
    p = run["manifest"]["pca"]
    ev, cum = np.array(p["explained_variance"]), np.array(p["cumulative_explained_variance"])
    assert len(ev) == len(cum) == p["k"] >= 2
    assert (ev >= 0).all() and (np.diff(ev) <= 1e-12).all()  # components by variance
    assert (np.diff(cum) >= 0).all() and cum[-1] <= 1.0
    assert p["variance_target"] == 0.95 and cum[-1] >= 0.95 and cum[-2] < 0.95


def test_pca_agrees_with_numpy_on_the_written_features(run: dict) -> None:
    table = pd.read_parquet(run["out"] / "features.parquet")
    feats = np.stack(table["features"].to_numpy()).astype(np.float64)
    scores = np.stack(table["pca"].to_numpy())
    assert feats.shape[1] == 1280 and np.isfinite(feats).all()
    centred = feats - feats.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False)
    expected = (sv**2 / (sv**2).sum())[: scores.shape[1]]
    np.testing.assert_allclose(run["manifest"]["pca"]["explained_variance"], expected,
                               rtol=1e-6, atol=1e-9)
    # The scores are projections of the centred features: same variance per component.
    np.testing.assert_allclose(scores.var(axis=0, ddof=1),
                               sv[: scores.shape[1]] ** 2 / (len(feats) - 1), rtol=1e-6)


def test_weights_come_from_the_broadcast_never_from_files_on_executors(run: dict) -> None:
    m = run["manifest"]
    builds = m["weights"]["executor_model_builds"]
    log = run["log"].read_text().splitlines()
    assert not [line for line in log if "VIOLATION" in line]
    hooked = {line.split()[0] for line in log if line.endswith("hook active")}
    built_by = {b.split()[1].rstrip(":") for b in builds}
    assert builds and all("from broadcast" in b for b in builds)
    assert built_by <= hooked  # the processes that built the model ran with the hook
    # Built once per Python worker, not once per task.
    assert len(builds) <= CORES < m["spark"]["input_partitions"]
    assert m["weights"]["loaded_on"] == "driver"


def test_onnx_executors_never_import_tensorflow(run: dict, demo_weights_file: Path) -> None:
    m = run["manifest"]
    log = run["log"].read_text().splitlines()
    assert not [line for line in log if "VIOLATION" in line]
    # The hook refused TensorFlow in every executor Python process, from its start.
    forbidding = [line for line in log if "tensorflow forbidden" in line]
    assert forbidding and all(line.endswith("already imported: []") for line in forbidding)
    builds = m["weights"]["executor_model_builds"]
    assert builds and all(": onnx model built from broadcast" in b for b in builds)
    w = m["weights"]
    assert w["engine"] == "onnx" and w["onnx_opset"] == 17
    assert re.fullmatch(r"[0-9a-f]{64}", w["model_sha256"]) and w["broadcast_bytes"] > 1e6
    assert w["sha256"] == hashlib.sha256(demo_weights_file.read_bytes()).hexdigest()
    assert m["versions"]["onnxruntime"] and m["settings"]["engine"] == "onnx"


def _features_by_path(out: Path) -> dict[str, np.ndarray]:
    table = pd.read_parquet(out / "features.parquet")
    pairs = zip(table["path"], table["features"], strict=True)
    return {p: np.asarray(f, dtype=np.float64) for p, f in pairs}


def test_both_engines_agree_on_features_and_pca(run: dict, tf_run: dict) -> None:
    assert tf_run["manifest"]["weights"]["engine"] == "tensorflow"
    assert not [line for line in tf_run["log"].read_text().splitlines() if "VIOLATION" in line]
    onnx, tf = _features_by_path(run["out"]), _features_by_path(tf_run["out"])
    assert set(onnx) == set(tf) and len(onnx) == run["manifest"]["counts"]["ok"]
    a = np.stack([onnx[p] for p in sorted(onnx)])
    b = np.stack([tf[p] for p in sorted(tf)])
    # 1e-4 relative to each image's feature vector (single features can be ~0 after ReLU6).
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() < 1e-4, rel.max()
    assert np.abs(a - b).max() < 1e-4 * np.abs(b).max()
    p_onnx, p_tf = run["manifest"]["pca"], tf_run["manifest"]["pca"]
    assert p_onnx["k"] == p_tf["k"]
    np.testing.assert_allclose(p_onnx["explained_variance"], p_tf["explained_variance"],
                               rtol=1e-4)


def test_outputs_are_complete_and_committed(run: dict) -> None:
    out = run["out"]
    for name in ["_SUCCESS", "manifest.json", "errors.csv", "pca_matrix.csv"]:
        assert (out / name).is_file()
    for png in ["pca_scatter.png", "explained_variance.png"]:
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
        assert Image.open(io.BytesIO(data)).size[0] > 500
    assert not list(out.parent.glob("_tmp-*"))  # the temporary location was moved
    assert not list(out.rglob("*.crc"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert set(manifest["timings_s"]) >= {"list", "featurize", "pca", "write", "total"}
    assert manifest["versions"]["spark"].startswith("4.")
    assert manifest["settings"]["input_size"] == INPUT_SIZE


def test_an_existing_output_is_refused(run: dict) -> None:
    opts = localjob.JobOptions(input=str(run["base"] / "input"), output=str(run["out"]),
                               weights="random")
    with pytest.raises(UserError, match="output already exists"):
        localjob.run_local(opts, cores=1)


def test_empty_and_missing_inputs_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("x")
    for given, message in [("empty", "no .jpg/.jpeg/.png files under"),
                           ("missing", "input path does not exist")]:
        opts = localjob.JobOptions(input=str(tmp_path / given), output=str(tmp_path / "o" / given),
                                   weights="random")
        with pytest.raises(UserError, match=message):
            localjob.run_local(opts, cores=1)
        assert not (tmp_path / "o" / given).exists()
