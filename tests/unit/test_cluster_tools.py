"""`fab ssh`, `fab ui` and `fab logs` without a cluster: which node, which ssh options,
which forwards, and the log collector run for real on this machine's files."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from sparkfab import inventory, nodelogs, sshcli, tunnel
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node
from sparkfab.layout import Layout


@pytest.fixture
def inv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Inventory:
    monkeypatch.setattr(inventory, "INVENTORY_DIR", tmp_path / "inventory")
    key = tmp_path / "id_ed25519"
    key.write_text("not read by these tests\n")
    cluster = Inventory(
        cluster="demo", region="eu-west-3", ssh_user="ubuntu", private_key_path=str(key),
        nodes=[
            Node(ROLE_MASTER, "i-m", "m6i.large", "10.0.1.10", "3.3.3.3", "master"),
            Node(ROLE_WORKER, "i-w1", "m6i.xlarge", "10.0.1.11", "3.3.3.4", "worker-1"),
            Node(ROLE_WORKER, "i-w2", "m6i.xlarge", "10.0.1.12", "3.3.3.5", "worker-2"),
        ],
    )
    inventory.save(cluster)
    inventory.known_hosts_path("demo").write_text("3.3.3.3 ssh-ed25519 AAAA\n")
    return cluster


def test_a_node_is_found_by_index_name_id_or_ip(inv: Inventory) -> None:
    assert sshcli.find_node(inv, None).name == "master"
    assert sshcli.find_node(inv, "2").name == "worker-2"
    assert sshcli.find_node(inv, "worker-1").instance_id == "i-w1"
    assert sshcli.find_node(inv, "i-w2").name == "worker-2"
    assert sshcli.find_node(inv, "10.0.1.11").name == "worker-1"
    with pytest.raises(UserError, match="no node 'worker-9'") as err:
        sshcli.find_node(inv, "worker-9")
    assert "0=master, 1=worker-1, 2=worker-2" in err.value.hint


def test_ssh_trusts_only_the_clusters_known_hosts(inv: Inventory) -> None:
    argv = sshcli.shell_argv(inv, inv.workers[0])
    opts = " ".join(argv)
    assert f"UserKnownHostsFile={inventory.known_hosts_path('demo')}" in opts
    assert "StrictHostKeyChecking=yes" in opts and "GlobalKnownHostsFile=/dev/null" in opts
    assert "IdentitiesOnly=yes" in opts and "-l ubuntu" in opts
    assert argv[-2:] == ["-t", "3.3.3.4"]
    assert sshcli.shell_argv(inv, inv.master, "uptime -p")[-3:] == ["3.3.3.3", "--", "uptime -p"]
    inventory.known_hosts_path("demo").unlink()
    with pytest.raises(UserError, match="no known host keys"):
        sshcli.shell_argv(inv, inv.master)


def test_the_ui_forwards_bind_loopback_only_and_reach_private_ips(inv: Inventory) -> None:
    with socket.socket() as busy:  # a local port already taken: another one is used
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        forwards = tunnel.plan(inv, master_port=taken, app_port=taken + 10)
    assert forwards[0].local_port != taken
    assert [(f.remote_host, f.remote_port) for f in forwards] == [
        ("10.0.1.10", 8080), ("10.0.1.10", 4040), ("10.0.1.11", 8081), ("10.0.1.12", 8081)]
    assert len({f.local_port for f in forwards}) == 4
    argv = tunnel.ssh_argv(inv, forwards)
    specs = [argv[i + 1] for i, a in enumerate(argv) if a == "-L"]
    assert specs and all(s.startswith("127.0.0.1:") for s in specs)
    assert "-g" not in argv and "GatewayPorts=no" in argv and "-N" in argv
    assert argv[-1] == "3.3.3.3"
    assert [f.url for f in forwards][0] == f"http://127.0.0.1:{forwards[0].local_port}/"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed "
                    "(apt-get install shellcheck; .ci/run does)")
def test_the_log_collector_passes_shellcheck(inv: Inventory) -> None:
    for node in inv.nodes:
        script = nodelogs.collect_script(node, "/tmp/x.tgz", "ubuntu")
        proc = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, text=True,
                              capture_output=True)
        assert proc.returncode == 0, proc.stdout


def test_the_log_collector_packs_logs_and_leaves_data_out(inv: Inventory, tmp_path: Path) -> None:
    node_root = tmp_path / "node"
    layout = Layout(log_dir=str(node_root / "log"), work_dir=str(node_root / "work"))
    (node_root / "log").mkdir(parents=True)
    (node_root / "log" / "spark-worker.log").write_text("worker started\n")
    app = node_root / "work" / "app-20261123-0001" / "0"
    app.mkdir(parents=True)
    (app / "stderr").write_text("executor log\n")
    (app / "stdout").write_text("")
    (app / "job.zip").write_bytes(b"PK")  # shipped code: not a log
    state = node_root / "idle-guard.json"
    state.write_text('{"deadline": 1}')
    archive = tmp_path / "out.tgz"
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    script = nodelogs.collect_script(inv.workers[0], str(archive), me, layout, str(state))
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert archive.stat().st_mode & 0o777 == 0o600
    count = nodelogs.unpack(archive, tmp_path / "fetched" / "worker-1")
    got = sorted(str(p.relative_to(tmp_path / "fetched")) for p in
                 (tmp_path / "fetched").rglob("*") if p.is_file())
    assert got == [
        "worker-1/apps/app-20261123-0001/0/stderr",
        "worker-1/apps/app-20261123-0001/0/stdout",
        "worker-1/daemons/spark-worker.log",
        "worker-1/idle-guard.json",
    ]
    assert count == 4


def test_unpack_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="outside"):
        nodelogs.unpack(evil, tmp_path / "dest")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_a_nodes_log_archive_passes_through_its_private_folder_not_tmp(
        inv: Inventory, tmp_path: Path) -> None:
    from types import SimpleNamespace

    seen: dict[str, str] = {}

    class Conn:
        def get(self, remote: str, local: str) -> None:
            seen["got"] = remote
            with tarfile.open(local, "w:gz") as tar:
                data = b"log line\n"
                info = tarfile.TarInfo("daemons/spark-worker.log")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

        def run(self, command: str, **kw: object) -> None:
            seen["removed"] = command

    class FakeRemote:
        def run_script(self, node: Node, step: str, script: str, timeout: int) -> object:
            seen["script"] = script
            return SimpleNamespace(ok=True, error="", exit_code=0, tail=[])

        def connection(self, node: Node) -> Conn:
            return Conn()

    count = nodelogs.fetch_node(FakeRemote(), inv, inv.workers[0], tmp_path / "logs")
    assert count == 1
    assert seen["got"].startswith(".sparkfab/logs-i-w1-") and seen["got"].endswith(".tgz")
    assert f"out={seen['got']}\n" in seen["script"]
    assert seen["removed"] == f"rm -f {seen['got']}"
