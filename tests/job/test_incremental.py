"""The feature store end to end: runs that featurize only what is new, and agree with a
run from scratch; --pca-from; two runs appending at once.

Run 1 on N images (and a bad one); then 10% new images, one changed, one deleted; run 2
must featurize exactly the new + changed ones and give the outputs a from-scratch run on
the same input gives: features bitwise, PCA to 1e-6.
"""

from __future__ import annotations

import csv
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparkfab import localjob, samples

pytestmark = pytest.mark.slow

PER_CLASS = 5  # 30 sample images
N_NEW = 3  # 10%
INPUT_SIZE = 96
CORES = 2


def _options(base: Path, weights: Path, name: str, store: str, **kw) -> localjob.JobOptions:
    return localjob.JobOptions(
        input=str(base / "input"), output=str(base / "runs" / name), weights=str(weights),
        input_size=INPUT_SIZE, images_per_partition=8, run_id=name,
        features=str(base / store), **kw)


def _fingerprint_dir(base: Path, store: str) -> Path:
    (found,) = (base / store).glob("fingerprint=*")
    return found


def _batch_paths(base: Path, store: str, batch: str) -> set[str]:
    table = pd.read_parquet(_fingerprint_dir(base, store) / f"batch={batch}")
    return set(table["path"])


def _uri(path: Path) -> str:
    return f"file:{path}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, demo_weights_file: Path) -> dict:
    base = tmp_path_factory.mktemp("incremental")
    src = base / "input"
    samples.generate(src, PER_CLASS)
    (src / samples.STAMP).unlink()
    (src / "bad").mkdir()
    (src / "bad" / "text.jpg").write_text("not a picture\n")
    (src / "bad" / "zero.jpg").write_bytes(b"")
    first = localjob.run_local(_options(base, demo_weights_file, "r1", "store"), cores=CORES)

    new = []
    for i in range(N_NEW):
        path = src / "lime" / f"new_{i}.jpg"
        samples.render("lime", 1000 + i).save(path)
        new.append(path)
    changed = src / "apple" / "apple_0001.jpg"
    stat = changed.stat()
    samples.render("apple", 500).save(changed)
    os.utime(changed, (stat.st_atime + 10, stat.st_mtime + 10))  # a new mtime on any FS
    deleted = src / "grapes" / "grapes_0002.jpg"
    deleted.unlink()

    second = localjob.run_local(_options(base, demo_weights_file, "r2", "store"), cores=CORES)
    scratch = localjob.run_local(_options(base, demo_weights_file, "r3", "fresh"), cores=CORES)
    projected = localjob.run_local(_options(base, demo_weights_file, "r4", "store",
                                            pca_from=str(base / "runs" / "r2")), cores=CORES)
    return {"base": base, "r1": first, "r2": second, "r3": scratch, "r4": projected,
            "new": [_uri(p) for p in new], "changed": _uri(changed),
            "deleted": _uri(deleted)}


def _features(base: Path, run: str) -> pd.DataFrame:
    return pd.read_parquet(base / "runs" / run / "features.parquet").set_index("path").sort_index()


def test_run_1_featurizes_everything_once(runs: dict) -> None:
    s = runs["r1"]["store"]
    n = PER_CLASS * len(samples.CLASSES)
    assert (s["reused"], s["featurized_now"], s["failed"]) == (0, n + 1, 2)
    assert s["size"]["images"] == n + 1 and s["size"]["batches"] == 1
    assert runs["r1"]["counts"] == {"input": n + 2, "ok": n, "failed": 2, "skipped": 0,
                                    "files_seen": n + 2}


def test_run_2_featurizes_exactly_the_new_and_the_changed(runs: dict) -> None:
    s = runs["r2"]["store"]
    n = PER_CLASS * len(samples.CLASSES)
    expected = {*runs["new"], runs["changed"]}
    assert s["featurized_now"] == len(expected) == N_NEW + 1
    assert _batch_paths(runs["base"], "store", s["batch"]) == expected
    # Everything else came from the store, the bad image included (not decoded again):
    # the n samples less the deleted and the changed one, plus text.jpg.
    assert s["reused"] == n - 2 + 1
    assert s["failed_reused"] == 1 and s["failed"] == 2
    # Run 1's n + 1 keys, and run 2's N_NEW + 1 (the changed image's old key stays).
    assert (s["size"]["images"], s["size"]["batches"]) == (n + 1 + N_NEW + 1, 2)
    # The input: the samples - 1 deleted + the new ones, and the two bad files.
    assert runs["r2"]["counts"]["input"] == n - 1 + N_NEW + 2
    assert runs["r2"]["counts"]["input"] == s["reused"] + s["featurized_now"] + 1  # + empty
    table = _features(runs["base"], "r2")
    assert runs["deleted"] not in table.index and set(runs["new"]) <= set(table.index)
    old = _features(runs["base"], "r1")
    assert not np.array_equal(table.loc[runs["changed"], "features"],
                              old.loc[runs["changed"], "features"])
    reasons = {r["path"]: r["reason"] for r in
               csv.DictReader((runs["base"] / "runs" / "r2" / "errors.csv").open())}
    assert set(reasons) == {_uri(runs["base"] / "input" / "bad" / n)
                            for n in ("text.jpg", "zero.jpg")}
    assert any("not an image" in r for r in reasons.values())


def test_run_2_equals_a_run_from_scratch(runs: dict) -> None:
    assert runs["r3"]["store"]["reused"] == 0
    inc, scratch = _features(runs["base"], "r2"), _features(runs["base"], "r3")
    assert list(inc.index) == list(scratch.index)
    for path in inc.index:  # bitwise: the same float32 values, not merely close
        a = np.asarray(inc.loc[path, "features"], dtype=np.float32)
        b = np.asarray(scratch.loc[path, "features"], dtype=np.float32)
        assert a.tobytes() == b.tobytes(), path
    assert (inc["label"] == scratch["label"]).all()
    assert runs["r2"]["pca"]["k"] == runs["r3"]["pca"]["k"]
    np.testing.assert_allclose(runs["r2"]["pca"]["explained_variance"],
                               runs["r3"]["pca"]["explained_variance"], rtol=0, atol=1e-6)
    pa, pb = np.stack(inc["pca"].to_numpy()), np.stack(scratch["pca"].to_numpy())
    signs = np.sign((pa * pb).sum(axis=0))  # a component is defined up to its sign
    np.testing.assert_allclose(pa, pb * signs, rtol=0, atol=1e-6)


def test_pca_from_projects_on_the_earlier_basis(runs: dict) -> None:
    m = runs["r4"]
    assert m["pca"]["basis"] == {"source": "pca_from", "run": str(runs["base"] / "runs" / "r2"),
                                 "run_id": "r2"}
    assert runs["r2"]["pca"]["basis"] == {"source": "fitted"}
    assert m["store"]["featurized_now"] == 0
    assert m["pca"]["explained_variance"] == runs["r2"]["pca"]["explained_variance"]
    a, b = _features(runs["base"], "r4"), _features(runs["base"], "r2")
    np.testing.assert_allclose(np.stack(a["pca"].to_numpy()), np.stack(b["pca"].to_numpy()),
                               rtol=0, atol=1e-6)
    basis = pd.read_parquet(runs["base"] / "runs" / "r4" / "pca_basis.parquet")
    assert list(basis["name"]) == ["mean"] + [f"pc_{i + 1}" for i in range(m["pca"]["k"])]


def test_pca_from_refuses_a_basis_of_other_features(runs: dict, demo_weights_file: Path) -> None:
    from sparkfab.errors import UserError

    opts = _options(runs["base"], demo_weights_file, "r5", "store",
                    pca_from=str(runs["base"] / "runs" / "r2"))
    opts.input_size = INPUT_SIZE + 32
    with pytest.raises(UserError, match="fitted on features of model setup"):
        localjob.run_local(opts, cores=1)
    assert not (runs["base"] / "runs" / "r5").exists()


def test_two_runs_appending_at_once_keep_the_store_consistent(
        tmp_path: Path, demo_weights_file: Path) -> None:
    src = tmp_path / "input"
    samples.generate(src, 2)
    (src / samples.STAMP).unlink()
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = localjob.run_local(
                _options(tmp_path, demo_weights_file, name, "store"), cores=1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    n = 2 * len(samples.CLASSES)
    # Both saw an empty store and featurized everything: two complete batches, same keys.
    fp = _fingerprint_dir(tmp_path, "store")
    assert sorted(p.name for p in (fp / "_commits").iterdir()) == sorted(
        results[r]["store"]["batch"] for r in "ab")
    assert not list(fp.glob("_tmp-*"))
    batches = [_batch_paths(tmp_path, "store", results[r]["store"]["batch"]) for r in "ab"]
    assert batches[0] == batches[1] and len(batches[0]) == n
    third = localjob.run_local(_options(tmp_path, demo_weights_file, "c", "store"), cores=1)
    assert (third["store"]["reused"], third["store"]["featurized_now"]) == (n, 0)
    assert third["store"]["size"]["images"] == n and third["store"]["size"]["batches"] == 2
    got = _features(tmp_path, "c")
    for r in "ab":
        other = _features(tmp_path, r)
        assert all(np.asarray(got.loc[p, "features"]).tobytes()
                   == np.asarray(other.loc[p, "features"]).tobytes() for p in got.index)
    shutil.rmtree(tmp_path / "runs")
