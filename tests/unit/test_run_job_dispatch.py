"""`fab run-job` picks the cluster when one is provisioned here, else local mode."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
from invoke import Context
from invoke.exceptions import Exit

from sparkfab import inventory, submit
from sparkfab.inventory import ROLE_MASTER, Inventory, Node

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    for name in [n for n in os.environ if n.startswith(("AWS_", "SPARKFAB_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SPARKFAB_CLUSTER", "t6")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inventory, "INVENTORY_DIR", tmp_path / "inventory")
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("tasks")


def test_with_an_inventory_the_job_goes_to_the_cluster_with_the_jobs_own_flags(
    tasks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(submit, "run_job", lambda *a, **kw: calls.append(a))
    monkeypatch.setattr(tasks, "run_job_local", lambda *a, **kw: calls.append(("local",)))
    tasks.run_job(Context(), input="s3://b/in", output="s3://b/out")
    assert calls == [("local",)]  # no inventory for t6: local mode

    inventory.save(Inventory("t6", "eu-west-3", "root", [
        Node(ROLE_MASTER, "i-m", "m6i.large", "10.0.0.4", None, "master")]))
    calls.clear()
    tasks.run_job(Context(), input="s3://b/in", output="s3://b/out", weights="random", k="3",
                  input_size="96", images_per_partition="3", engine="tensorflow")
    (settings, inp, out, job_args), = calls
    assert (settings.cluster, inp, out) == ("t6", "s3://b/in", "s3://b/out")
    assert job_args == ["--weights", "random", "--engine", "tensorflow", "--k", "3",
                        "--input-size", "96", "--images-per-partition", "3"]
    calls.clear()
    tasks.run_job(Context(), input="s3://b/in", output="s3://b/out", features="s3://b/f",
                  refeaturize=True, pca_from="s3://b/runs/r1")
    assert calls[0][3] == ["--features", "s3://b/f", "--pca-from", "s3://b/runs/r1",
                           "--refeaturize"]
    with pytest.raises(Exit, match="local mode only"):
        tasks.run_job(Context(), input="s3://b/in", output="s3://b/out", cores="2")
    with pytest.raises(Exit, match="give --input and --output as s3:// paths"):
        tasks.run_job(Context(), input="s3://b/in")


def test_submit_passes_the_scripts_exit_status_through(
    tasks: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake(settings, app, py_files, args, name=None, verbose=False):
        calls.append((settings.cluster, app, py_files, args, name))
        return submit.Submitted("r", 3 if "--fail" in args else 0, None, tmp_path, 1.0)

    monkeypatch.setattr(submit, "submit_script", fake)
    tasks.submit(Context(), "app.py", py_files="a.py, b.zip", args="--n 3 'x y'")
    assert calls == [("t6", "app.py", ["a.py", "b.zip"], ["--n", "3", "x y"], None)]
    with pytest.raises(Exit) as err:
        tasks.submit(Context(), "app.py", args="--fail")
    assert err.value.code == 3
    with pytest.raises(Exit, match="error: --args: No closing quotation"):
        tasks.submit(Context(), "app.py", args="'open")
    with pytest.raises(Exit, match="'--help' is not a script") as err:
        tasks.submit(Context(), "--help")
    assert "fab --help submit" in str(err.value)
