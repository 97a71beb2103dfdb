"""bench/incremental.py end to end on a handful of small images: both runs featurize what
they should and the three ratios are printed (their values are the benchmark's business,
on 2,000 images), and a --workdir it did not make is left alone."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_incremental",
                                                  REPO / "bench" / "incremental.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_incremental_benchmark_runs_and_prints_its_ratios(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparkfab import class_archive

    monkeypatch.setenv(class_archive.SWITCH_ENV, "off")  # no priming run for the archive
    bench = _bench()
    work = tmp_path / "work"
    small = ["--images", "20", "--rounds", "1", "--input-size", "32", "--batch-size", "4"]
    assert bench.main([*small, "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "run 1-1: 20 images, 0 reused, 20 featurized now;" in out
    assert "run 1-2: 22 images, 20 reused, 2 featurized now;" in out
    for name in bench.RATIOS:
        assert re.search(rf"^{re.escape(name)}, run 2 / run 1 = \d+\.\d{{3}}$", out, re.M)
    assert not work.exists()

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("not the benchmark's")
    with pytest.raises(SystemExit, match="did not make"):
        bench.main([*small, "--workdir", str(theirs)])
    assert (theirs / "keep.txt").read_text() == "not the benchmark's"
