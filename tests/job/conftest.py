"""Spark local-mode job tests: one job run per module, many assertions on it; `spark`, a
local session in this process for the tests of the job's parts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "job"))  # the job's modules are top-level names


@pytest.fixture(scope="session")
def demo_weights_file() -> Path:
    from sparkfab import demo_weights

    path = REPO / demo_weights.DEFAULT_OUT
    if not path.exists():  # `make test` makes it first; a bare pytest run still works
        demo_weights.build(path)
    return path


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    from sparkfab.localjob import LOCAL_SPARK_CONF, local_env

    # This venv's Java and Python for the driver and its workers, as `fab run-job` uses;
    # restored afterwards, so no other test runs with them by accident.
    with pytest.MonkeyPatch.context() as env:
        for key, value in local_env().items():
            if key.startswith(("JAVA", "PYSPARK")):
                env.setenv(key, value)
        builder = SparkSession.builder.master("local[2]")
        for key, value in LOCAL_SPARK_CONF.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        yield session
        session.stop()
