"""job/outputs.py's commit through Hadoop's FileSystem API (local here; tests/cluster runs
it on s3a): the finished run replaces an empty --output, and anything another writer put
there after the run found it free is refused and left alone, never deleted."""

from __future__ import annotations

from pathlib import Path

import outputs
import pytest

pytestmark = pytest.mark.slow


def _finished_run(tmp_path: Path) -> Path:
    temp = tmp_path / "_tmp-r1"
    (temp / "features.parquet").mkdir(parents=True)
    (temp / "features.parquet" / "part-0.parquet").write_bytes(b"PAR1")
    (temp / "pca_matrix.csv").write_text("path,label,pc_1\n")
    return temp


def test_the_run_replaces_an_empty_output_folder(spark, tmp_path: Path) -> None:
    temp = _finished_run(tmp_path)
    (tmp_path / "r1").mkdir()
    outputs.commit(spark, str(temp), str(tmp_path / "r1"))
    assert (tmp_path / "r1" / "pca_matrix.csv").is_file()
    assert (tmp_path / "r1" / "features.parquet" / "part-0.parquet").is_file()
    assert not temp.exists()


def test_an_output_that_gained_files_is_refused_and_nothing_is_deleted(spark, tmp_path: Path
                                                                      ) -> None:
    temp = _finished_run(tmp_path)
    theirs = tmp_path / "r1" / "theirs" / "data.csv"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("someone else's\n")
    with pytest.raises(outputs.OutputTaken) as err:
        outputs.commit(spark, str(temp), str(tmp_path / "r1"))
    assert str(err.value).startswith(f"--output {tmp_path / 'r1'} gained files while the run "
                                     "was working (theirs)")
    assert err.value.kept == str(temp) and str(temp) in str(err.value)
    assert theirs.read_text() == "someone else's\n"
    assert (temp / "pca_matrix.csv").is_file()  # the finished run is kept


def test_a_file_in_place_of_the_output_folder_is_refused(spark, tmp_path: Path) -> None:
    temp = _finished_run(tmp_path)
    (tmp_path / "r1").write_text("a file\n")
    with pytest.raises(outputs.OutputTaken, match=r"\(r1\)"):
        outputs.commit(spark, str(temp), str(tmp_path / "r1"))
    assert (tmp_path / "r1").read_text() == "a file\n"


def test_a_file_written_after_the_emptiness_check_still_stops_the_commit(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest race: the folder is empty when listed and gains a file before the
    delete. Only a delete that refuses a non-empty folder keeps that file."""
    temp = _finished_run(tmp_path)
    out = tmp_path / "r1"
    out.mkdir()
    listed = outputs.Store.is_empty_dir

    def empty_then_written(store: outputs.Store) -> bool:
        was_empty = listed(store)
        (out / "late.csv").write_text("written just after the listing\n")
        return was_empty

    monkeypatch.setattr(outputs.Store, "is_empty_dir", empty_then_written)
    with pytest.raises(outputs.OutputTaken, match=r"\(late\.csv\)"):
        outputs.commit(spark, str(temp), str(out))
    assert (out / "late.csv").read_text() == "written just after the listing\n"
    assert (temp / "pca_matrix.csv").is_file()
