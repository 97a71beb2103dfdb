"""The AWS `fab` tasks as a user meets them: --list, --help, confirmation, error lines."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from invoke import Context
from invoke.exceptions import Exit

import tasks

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(120)  # moto in-process: a hang is a bug

REPO = Path(__file__).resolve().parents[2]
AWS_TASKS = ("provision", "status", "teardown")


@pytest.mark.parametrize("name", AWS_TASKS)
def test_every_flag_has_help_and_the_docstring_a_one_line_summary(name: str) -> None:
    task = getattr(tasks, name)
    params = [p for p in inspect.signature(task.body).parameters if p != "c"]
    assert sorted(task.help) == sorted(params)
    assert all(len(text) > 10 for text in task.help.values())
    summary = task.body.__doc__.strip().splitlines()[0]
    assert summary.endswith(".") and len(summary) < 100


def test_fab_list_shows_each_task_with_its_summary() -> None:
    fab = Path(sys.executable).with_name("fab")
    out = subprocess.run([str(fab), "--list"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()
              and line.startswith("  ") and not line.startswith("    ")}
    for name in AWS_TASKS:
        assert name in listed and len(listed[name].split()) > 2, out.stdout


def _provision(cloud: Cloud) -> None:
    from sparkfab.provision import provision

    provision(cloud.settings(), cloud.lines(), install=False)


def _task_settings(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARKFAB_CLUSTER", cloud.cluster)
    monkeypatch.setenv("SPARKFAB_REGION", cloud.region)


def test_teardown_without_a_terminal_needs_yes_and_deletes_nothing(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _provision(cloud)
    _task_settings(cloud, monkeypatch)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    with pytest.raises(Exit) as err:
        tasks.teardown(Context())
    assert err.value.code == 1
    assert str(err.value.message).startswith("error: teardown needs confirmation")
    assert "--yes" in str(err.value.message)
    assert len(cloud.live_instances()) == 3
    assert "will delete" in capsys.readouterr().out


def test_teardown_answered_no_deletes_nothing(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _provision(cloud)
    _task_settings(cloud, monkeypatch)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    tasks.teardown(Context())
    assert "nothing deleted" in capsys.readouterr().out
    assert len(cloud.live_instances()) == 3


def test_status_task_prints_the_table(cloud: Cloud, monkeypatch, capsys) -> None:
    _provision(cloud)
    _task_settings(cloud, monkeypatch)
    tasks.status(Context())
    out = capsys.readouterr().out
    assert out.count("running") >= 3 and "USD/hour" in out
    for name in ("master", "worker-1", "worker-2"):
        assert name in out


def test_status_task_counts_the_inventorys_workers_alive_in_spark(
        cloud: Cloud, monkeypatch, capsys) -> None:
    """Once installed (known_hosts recorded), status adds Spark's view: a restarted worker
    (a DEAD entry beside its ALIVE one), a worker that is gone and a host that is no node
    of the cluster must not add up to "3 of 4"."""
    from sparkfab import inventory, spark

    _provision(cloud)
    _task_settings(cloud, monkeypatch)
    inv = inventory.load(cloud.cluster)
    assert inv is not None
    inventory.known_hosts_path(cloud.cluster).write_text("")
    w1, w2 = (n.private_ip for n in inv.workers)

    def entry(host: str, state: str) -> dict:
        return {"host": host, "state": state, "cores": 2, "coresused": 0, "memory": 4096,
                "memoryused": 0}

    doc = {"status": "ALIVE", "workers": [entry(w1, "DEAD"), entry(w1, "ALIVE"),
                                          entry(w2, "DEAD"), entry("10.99.0.9", "ALIVE")]}
    asked = []
    monkeypatch.setattr(spark, "master_json", lambda remote, i: asked.append(i) or doc)
    tasks.status(Context())
    out = capsys.readouterr().out
    assert asked and "1 of 2 workers ALIVE" in out, out
    assert f"worker-2 ({w2}): DEAD" in out
    assert "not in the inventory (not counted): 10.99.0.9" in out


def test_a_bad_flag_ends_the_task_with_error_and_hint(aws_env) -> None:
    with pytest.raises(Exit) as err:
        tasks.provision(Context(), region="us-east-1", install=False)
    lines = str(err.value.message).splitlines()
    assert lines[0].startswith("error: invalid settings: region 'us-east-1'")
    assert lines[1].startswith("hint: ")


def test_a_wide_operator_network_needs_the_flag_that_says_it_is_meant(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _task_settings(cloud, monkeypatch)
    monkeypatch.setenv("SPARKFAB_PUBLIC_KEY_PATH", str(cloud.home / "id_ed25519.pub"))
    monkeypatch.setenv("SPARKFAB_AMI_SSM_PARAMETER", cloud.settings().ami_ssm_parameter)
    with pytest.raises(Exit) as err:
        tasks.provision(Context(), operator_cidr="10.0.0.0/8", install=False)
    lines = str(err.value.message).splitlines()
    assert lines[0].startswith("error: invalid settings: operator_cidr 10.0.0.0/8 is wider")
    assert "--allow-wide-operator-cidr" in lines[1]
    assert not cloud.ec2.describe_instances()["Reservations"]
    tasks.provision(Context(), operator_cidr="10.0.0.0/8", allow_wide_operator_cidr=True,
                    install=False)
    assert "SSH allowed from 10.0.0.0/8" in capsys.readouterr().out
