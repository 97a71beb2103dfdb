"""A first local run writes the driver's class archive, and spark-submit's own JVM maps it:
-Xshare:on refuses to start on an archive it cannot use (garbled ones here, to show it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkfab import class_archive, localjob, samples
from sparkfab.java import java_home

pytestmark = pytest.mark.slow


def test_a_first_local_run_writes_an_archive_that_spark_submits_jvm_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(class_archive.CACHE_ENV, str(tmp_path / "jvm"))
    monkeypatch.delenv(class_archive.SWITCH_ENV, raising=False)
    samples.generate(tmp_path / "input", 1)
    opts = localjob.JobOptions(input=str(tmp_path / "input"), output=str(tmp_path / "run"),
                               weights="random", k=2, input_size=32, run_id="r")
    localjob.run_local(opts, cores=2)
    home = java_home()
    assert home is not None
    archive = class_archive.archive_path(home)
    assert sorted(p.name for p in (tmp_path / "jvm").iterdir()) == [archive.name,
                                                                     f"{archive.name}.size"]
    assert archive.stat().st_size > 10_000_000  # Spark's classes, not the JDK's few
    assert localjob.jvm_maps_archive(archive)
    header_only = tmp_path / "header-only.jsa"  # the JVM dies on this one (SIGBUS)
    header_only.write_bytes(archive.read_bytes()[:4096])
    no_header = tmp_path / "no-header.jsa"
    no_header.write_bytes(b"not an archive" * 1000)
    here = sorted(Path.cwd().iterdir())
    assert not localjob.jvm_maps_archive(header_only)
    assert not localjob.jvm_maps_archive(no_header)
    assert sorted(Path.cwd().iterdir()) == here  # no hs_err_*.log left behind
