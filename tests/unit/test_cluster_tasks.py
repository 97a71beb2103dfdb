"""The `fab` tasks upload-data / ssh / ui / logs, called as fab calls them: flags in, one
line out, exit codes a shell can test."""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit
from moto import mock_aws

from sparkfab import inventory
from sparkfab.aws import session
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-3"


@pytest.fixture
def tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in [n for n in os.environ if n.startswith(("AWS_", "SPARKFAB_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("SPARKFAB_REGION", REGION)
    monkeypatch.setenv("SPARKFAB_CLUSTER", "t5")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inventory, "INVENTORY_DIR", tmp_path / "inventory")
    monkeypatch.syspath_prepend(str(REPO))
    session.forget_sessions()
    yield importlib.import_module("tasks")
    session.forget_sessions()


def save_cluster(tmp_path: Path) -> Inventory:
    key = tmp_path / "id_ed25519"
    key.write_text("unused\n")
    inv = Inventory(
        cluster="t5", region=REGION, ssh_user="ubuntu", private_key_path=str(key),
        bucket="t5-data",
        nodes=[Node(ROLE_MASTER, "i-m", "m6i.large", "10.0.1.10", "3.3.3.3", "master"),
               Node(ROLE_WORKER, "i-w", "m6i.large", "10.0.1.11", "3.3.3.4", "worker-1")],
    )
    inventory.save(inv)
    inventory.known_hosts_path("t5").write_text("3.3.3.3 ssh-ed25519 AAAA\n")
    return inv


def test_upload_data_task_uploads_and_prints_the_summary(tasks, tmp_path: Path, capsys) -> None:
    src = tmp_path / "imgs" / "apple"
    src.mkdir(parents=True)
    (src / "1.jpg").write_bytes(b"\xff\xd8" * 50)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket="t5-data", CreateBucketConfiguration={"LocationConstraint": REGION})
        tasks.upload_data(Context(), str(tmp_path / "imgs"), "s3a://t5-data/images")
        first = capsys.readouterr().out
        tasks.upload_data(Context(), str(tmp_path / "imgs"), "s3://t5-data/images/")
        second = capsys.readouterr().out
    assert "uploaded 1 files (0.0 MB) to s3://t5-data/images/" in first
    assert "uploaded 0 files" in second and "skipped 1 already there" in second


def test_upload_data_task_errors_are_one_line_and_exit_1(tasks, tmp_path: Path) -> None:
    with mock_aws():
        with pytest.raises(Exit) as err:
            tasks.upload_data(Context(), str(tmp_path / "missing"), "s3://t5-data/x")
        assert err.value.code == 1
        assert str(err.value.message).startswith("error: folder ")
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "a.jpg").write_bytes(b"x")
        with pytest.raises(Exit, match="bucket 'no-such-bucket' not found"):
            tasks.upload_data(Context(), str(tmp_path / "d"), "s3://no-such-bucket/x")
    with pytest.raises(Exit, match="not an S3 location"):
        tasks.upload_data(Context(), str(tmp_path / "d"), "/local/path")


def test_tasks_on_a_cluster_that_does_not_exist_say_so(tasks) -> None:
    for call in (lambda: tasks.ssh(Context()), lambda: tasks.logs(Context()),
                 lambda: tasks.ui(Context())):
        with pytest.raises(Exit, match="no cluster 't5' here"):
            call()


def test_ssh_task_runs_the_system_ssh_and_passes_its_exit_code(
    tasks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_cluster(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/ssh-args\nexit 3\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(Exit) as err:
        tasks.ssh(Context(), node="1", command="uptime -p")
    assert err.value.code == 3
    args = (tmp_path / "ssh-args").read_text().splitlines()
    assert args[-3:] == ["3.3.3.4", "--", "uptime -p"]
    assert f"UserKnownHostsFile={inventory.known_hosts_path('t5')}" in args


# Quotes, a pipe, a $VAR and a glob: what a user types for the node's shell.
QUOTED = ("printf '%s\\n' \"install ok installed\" other | grep -c \"install ok installed\"; "
          "echo \"[$SPARKFAB_T_VAR]\"; ls *.txt")


def test_ssh_task_gives_the_command_to_the_nodes_shell_as_written(
    tasks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh joins the words after the host with spaces and the node's shell parses that: the
    task must hand over the user's line unchanged, as one word. Run here the way sshd runs
    it (`$SHELL -c LINE`), it must print what the line means."""
    save_cluster(tmp_path)
    seen: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda argv: seen.append(argv) or 0)
    tasks.ssh(Context(), node="0", command=QUOTED)
    argv = seen[0]
    assert argv[0] == "ssh" and argv[-3:] == ["3.3.3.3", "--", QUOTED]
    node = tmp_path / "node"
    node.mkdir()
    for name in ("b.txt", "a.txt", "c.log"):
        (node / name).write_text("")
    remote_line = " ".join(argv[argv.index("--") + 1:])  # what ssh sends
    out = subprocess.run(["sh", "-c", remote_line], cwd=node, capture_output=True, text=True,
                         env={**os.environ, "SPARKFAB_T_VAR": "on the node"}, timeout=30)
    assert out.stdout.splitlines() == ["1", "[on the node]", "a.txt", "b.txt"], out


def test_every_cluster_task_has_help_for_every_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "fabric", "--list"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("upload-data", "ui", "logs", "ssh"):
        assert f"  {name} " in out.stdout
        shown = subprocess.run([sys.executable, "-m", "fabric", "--help", name], cwd=REPO,
                               capture_output=True, text=True, timeout=120).stdout
        flags = [line.split()[0] for line in shown.splitlines()
                 if line.strip().startswith("--")]
        assert flags, shown
        for line in shown.splitlines():
            if line.strip().startswith("--"):
                assert len(line.split()) > 1, f"{name}: {line.strip()} has no help"
