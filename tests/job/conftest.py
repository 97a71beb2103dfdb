"""Spark local-mode job tests: one job run per module, many assertions on it."""

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
