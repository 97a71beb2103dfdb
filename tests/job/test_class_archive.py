"""A first local run writes the driver's class archive, and spark-submit's own JVM maps it:
-Xshare:on refuses to start on an archive it cannot use (a garbled one here, to show it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sparkfab import class_archive, localjob, samples
from sparkfab.java import java_home

pytestmark = pytest.mark.slow


def _starts_with(archive: Path) -> subprocess.CompletedProcess[str]:
    options = f"-Xshare:on -XX:SharedArchiveFile={archive}"
    return subprocess.run(
        [str(localjob.spark_submit()), "--conf", f"spark.driver.extraJavaOptions={options}",
         "--version"], env=localjob.local_env(), capture_output=True, text=True, timeout=120)


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
    assert [p.name for p in (tmp_path / "jvm").iterdir()] == [archive.name]
    assert archive.stat().st_size > 10_000_000  # Spark's classes, not the JDK's few
    used = _starts_with(archive)
    assert used.returncode == 0, used.stderr
    garbled = tmp_path / "garbled.jsa"
    garbled.write_bytes(archive.read_bytes()[:4096])
    assert _starts_with(garbled).returncode != 0
