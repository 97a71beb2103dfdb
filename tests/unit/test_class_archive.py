"""The driver JVM's class archive: which one a run uses, when a run writes one, and that a
run that failed, wrote nothing or wrote what no JVM maps leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkfab import class_archive


def _maps(archive: Path) -> bool:  # the JVM's verdict (tests/job/test_class_archive_jvm.py)
    return archive.read_bytes() != b"unmappable"


@pytest.fixture
def java_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(class_archive.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(class_archive.SWITCH_ENV, raising=False)
    home = tmp_path / "jdk"
    home.mkdir()
    (home / "release").write_text('JAVA_VERSION="17.0.15"\n')
    return home


def test_a_first_run_writes_the_archive_aside_and_a_later_run_maps_it(java_home: Path) -> None:
    first = class_archive.plan(java_home)
    assert first.writing is not None and first.final is not None
    assert f"-XX:ArchiveClassesAtExit={first.writing}" in first.java_options.split()
    assert first.writing.parent == first.final.parent == class_archive.cache_dir()
    assert not first.final.exists()
    first.writing.write_bytes(b"archive")  # what the JVM writes as it exits
    assert class_archive.finish(first, succeeded=True, maps=_maps)
    assert first.final.read_bytes() == b"archive" and not first.writing.exists()

    later = class_archive.plan(java_home)
    assert later.writing is None
    assert f"-XX:SharedArchiveFile={first.final}" in later.java_options.split()
    assert class_archive.QUIET in later.java_options.split()
    assert not class_archive.finish(later, succeeded=True, maps=_maps)
    assert first.final.exists()


def test_a_failed_run_or_one_whose_jvm_wrote_nothing_leaves_no_archive(java_home: Path) -> None:
    failed = class_archive.plan(java_home)
    assert failed.writing is not None and failed.final is not None
    failed.writing.write_bytes(b"half")
    assert not class_archive.finish(failed, succeeded=False, maps=_maps)
    assert not failed.writing.exists() and not failed.final.exists()
    silent = class_archive.plan(java_home)  # a JVM with no base archive writes none
    assert silent.writing != failed.writing  # two first runs at once: names of their own
    assert not class_archive.finish(silent, succeeded=True, maps=_maps)
    assert silent.final is not None and not silent.final.exists()
    unmappable = class_archive.plan(java_home)
    assert unmappable.writing is not None
    unmappable.writing.write_bytes(b"unmappable")
    assert not class_archive.finish(unmappable, succeeded=True, maps=_maps)
    assert not list(class_archive.cache_dir().iterdir())


def test_an_archive_cut_short_is_written_anew_not_mapped(java_home: Path) -> None:
    # The JVM dies (SIGBUS) on an archive whose header is whole and whose body is not.
    first = class_archive.plan(java_home)
    assert first.writing is not None and first.final is not None
    first.writing.write_bytes(b"archive")
    assert class_archive.finish(first, succeeded=True, maps=_maps)
    with first.final.open("r+b") as fh:
        fh.truncate(3)
    again = class_archive.plan(java_home)
    assert again.writing is not None and "SharedArchiveFile" not in again.java_options
    assert not first.final.exists()
    again.writing.write_bytes(b"archive, whole")
    assert class_archive.finish(again, succeeded=True, maps=_maps)
    assert "SharedArchiveFile" in class_archive.plan(java_home).java_options


def test_another_java_or_other_spark_jars_name_another_archive(java_home: Path,
                                                               tmp_path: Path) -> None:
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "spark-core.jar").write_bytes(b"1")
    before = class_archive.archive_path(java_home, jars)
    assert class_archive.archive_path(java_home, jars) == before
    (jars / "spark-core.jar").write_bytes(b"12")
    after_jar = class_archive.archive_path(java_home, jars)
    (java_home / "release").write_text('JAVA_VERSION="17.0.16"\n')
    after_java = class_archive.archive_path(java_home, jars)
    assert len({before, after_jar, after_java}) == 3


def test_a_new_archive_replaces_the_ones_of_an_earlier_java(java_home: Path) -> None:
    cache = class_archive.cache_dir()
    cache.mkdir(parents=True)
    old = cache / f"spark-driver-0123456789abcdef{class_archive.SUFFIX}"
    old.write_bytes(b"old")
    unrelated = cache / "notes.txt"
    unrelated.write_text("kept")
    plan = class_archive.plan(java_home)
    assert plan.writing is not None
    plan.writing.write_bytes(b"new")
    assert class_archive.finish(plan, succeeded=True, maps=_maps)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [plan.final.name, f"{plan.final.name}.size", "notes.txt"])


def test_no_archive_when_switched_off_or_where_spark_could_not_pass_the_path(
    java_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert class_archive.plan(None).java_options == ""
    monkeypatch.setenv(class_archive.SWITCH_ENV, "off")
    assert class_archive.plan(java_home) == class_archive.Plan("")
    monkeypatch.delenv(class_archive.SWITCH_ENV)
    # Spark splits extraJavaOptions at spaces: such a path would be cut in two.
    monkeypatch.setenv(class_archive.CACHE_ENV, str(tmp_path / "my cache"))
    assert class_archive.plan(java_home) == class_archive.Plan("")
    assert not (tmp_path / "my cache").exists()
