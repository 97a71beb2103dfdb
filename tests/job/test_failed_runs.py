"""A run that fails during PCA or during the writes leaves neither --output nor any _tmp-*;
a run whose --output gains someone else's file before the commit refuses, deletes nothing
and keeps its finished results. The failures are made in the job's driver by
fail_driver/sitecustomize.py, after the real work of that stage ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkfab import localjob, samples
from sparkfab.errors import UserError

pytestmark = pytest.mark.slow

FAIL_DIR = Path(__file__).parent / "fail_driver"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("input")
    samples.generate(root, 2)
    return root


def _run(images: Path, runs: Path, at: str, monkeypatch: pytest.MonkeyPatch,
         **env: str) -> None:
    monkeypatch.setenv("PYTHONPATH", str(FAIL_DIR))
    monkeypatch.setenv("SPARKFAB_FAIL_AT", at)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    opts = localjob.JobOptions(input=str(images), output=str(runs / "r1"), weights="random",
                               k=2, input_size=32, images_per_partition=6, run_id="r1")
    localjob.run_local(opts, cores=2)


@pytest.mark.parametrize(("at", "said"), [("pca", "injected failure during PCA"),
                                          ("write", "injected failure during the writes")])
def test_a_run_failing_in_pca_or_the_writes_leaves_no_output_and_no_temp(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, at: str, said: str
) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match=r"the featurize \+ PCA job failed \(exit status 1\)"):
        _run(images, runs, at, monkeypatch)
    shown = capsys.readouterr()
    # It failed where the test made it fail (spark-submit sends the driver's stderr to its
    # stdout, so the traceback may be in either).
    assert said in shown.out + shown.err
    assert not (runs / "r1").exists()
    assert not list(runs.glob("_tmp-*"))


def test_an_output_taken_before_the_commit_is_left_alone_and_the_run_kept(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    intruder = runs / "r1" / "intruder.csv"
    with pytest.raises(UserError) as err:
        _run(images, runs, "taken", monkeypatch, SPARKFAB_INTRUDER=str(intruder))
    assert err.value.message.startswith(
        f"--output {runs / 'r1'} gained files while the run was working (intruder.csv); "
        "nothing there was deleted or overwritten")
    assert sorted(p.name for p in (runs / "r1").iterdir()) == ["intruder.csv"]
    assert intruder.read_text() == "someone else's\n"
    kept = runs / "_tmp-r1"
    assert str(kept) in err.value.message
    assert (kept / "pca_matrix.csv").is_file() and (kept / "features.parquet").is_dir()
