"""The operator's tools against real hosts: `fab ssh`, the `fab ui` tunnel, `fab logs`, and
`fab upload-data` to moto_server over HTTP. No Spark install is needed for these."""

from __future__ import annotations

import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparkfab import inventory, nodelogs, s3path, sshcli, transfer, tunnel
from sparkfab.inventory import Inventory
from sparkfab.localcloud import Keypair, LocalCloud, inventory_for
from sparkfab.localcloud.hosts import LOCAL_REGION
from sparkfab.remote import Remote, parallel

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def inv(local_cloud: LocalCloud, ssh_keypair: Keypair, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Inventory:
    """The cloud's three hosts as cluster 't5', with its known_hosts where tasks look."""
    monkeypatch.setattr(inventory, "INVENTORY_DIR", tmp_path / "inventory")
    hosts = [local_cloud.hosts[n] for n in ("master", "worker-1", "worker-2")]
    record = inventory_for(local_cloud, hosts, "t5", bucket="t5-data",
                           private_key_path=str(ssh_keypair.private_key))
    inventory.save(record)
    inventory.known_hosts_path("t5").write_text(local_cloud.known_hosts())
    return record


def test_fab_ssh_runs_on_the_chosen_node_and_trusts_only_recorded_keys(inv: Inventory) -> None:
    for which, node in (("0", inv.master), ("worker-2", inv.workers[1])):
        argv = sshcli.shell_argv(inv, sshcli.find_node(inv, which),
                                 "ip -4 -o addr show dev eth0")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"inet {node.private_ip}/" in out.stdout
    # A known_hosts that names another key for the master: ssh must refuse.
    kh = inventory.known_hosts_path("t5")
    lines = kh.read_text().splitlines()
    master_line = next(line for line in lines if line.startswith(inv.master.private_ip + " "))
    worker_key = next(line for line in lines if line.startswith(inv.workers[0].private_ip + " "))
    forged = worker_key.replace(inv.workers[0].private_ip, inv.master.private_ip, 1)
    kh.write_text("\n".join(forged if line == master_line else line for line in lines) + "\n")
    out = subprocess.run(sshcli.shell_argv(inv, inv.master, "true"), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in out.stderr


def test_fab_ssh_command_reaches_the_nodes_shell_as_written(
    inv: Inventory, local_cloud: LocalCloud
) -> None:
    """The issue's line (quotes, a pipe, `${Status}` for dpkg-query), then a $VAR and a glob
    that only the node's shell can expand: each must mean there what it says here."""
    worker = local_cloud.hosts["worker-1"]
    setup = "mkdir -p /tmp/t9 && cd /tmp/t9 && touch b.txt a.txt c.log"
    subprocess.run(worker.exec_argv("sh", "-c", setup), check=True, timeout=30)
    line = ('dpkg-query -W -f="\\${Status}\\n" openssh-server | grep -c "install ok installed"; '
            'echo "[$HOME]"; cd /tmp/t9 && ls *.txt')
    argv = sshcli.shell_argv(inv, sshcli.find_node(inv, "worker-1"), line)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1", "[/root]", "a.txt", "b.txt"], out


FAKE_UI = textwrap.dedent("""\
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"spark master ui on " + sys.argv[1].encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
""")


@pytest.fixture
def fake_master_ui(local_cloud: LocalCloud, inv: Inventory) -> Iterator[None]:
    """An HTTP server on the master's private IP, port 8080, inside its namespace."""
    master = local_cloud.hosts["master"]
    # The node's own python3 (the venv lives outside what the node sees as its filesystem).
    proc = subprocess.Popen(master.exec_argv("python3", "-c", FAKE_UI, master.ip, "8080"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            probe = subprocess.run(master.exec_argv("python3", "-c", (
                f"import socket; socket.create_connection(('{master.ip}', 8080), 1)")),
                capture_output=True)
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "fake UI did not start"
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_fab_ui_tunnels_the_master_ui_to_loopback_only(inv: Inventory, fake_master_ui: None
                                                        ) -> None:
    forwards = tunnel.plan(inv, master_port=18080, app_port=14040)
    proc = subprocess.Popen(tunnel.ssh_argv(inv, forwards), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert tunnel.wait_listening(forwards[0].local_port, proc, timeout_s=30)
        with urllib.request.urlopen(forwards[0].url, timeout=10) as resp:
            assert resp.read() == f"spark master ui on {inv.master.private_ip}".encode()
        listening = subprocess.run(["ss", "-ltnH", "-p"], capture_output=True, text=True).stdout
        ours = [line.split()[3] for line in listening.splitlines() if f"pid={proc.pid}," in line]
        assert ours and all(addr.startswith("127.0.0.1:") for addr in ours), ours
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_fab_logs_fetches_every_nodes_logs_into_its_own_folder(
    inv: Inventory, local_cloud: LocalCloud, tmp_path: Path
) -> None:
    for name, host in local_cloud.hosts.items():
        setup = (f"mkdir -p /var/log/spark /var/lib/spark/work/app-7/0 && "
                 f"echo 'daemon on {name}' > /var/log/spark/spark-worker.log && "
                 f"echo 'executor on {name}' > /var/lib/spark/work/app-7/0/stderr")
        subprocess.run(host.exec_argv("sh", "-c", setup), check=True, timeout=30)
    dest = tmp_path / "logs"
    with Remote(inv, known_hosts=inventory.known_hosts_path("t5"), out=None) as remote:
        counts = parallel(inv.nodes, lambda n: nodelogs.fetch_node(remote, inv, n, dest))
    assert counts == {"master": 2, "worker-1": 2, "worker-2": 2}
    for name in counts:
        assert (dest / name / "daemons" / "spark-worker.log").read_text() == f"daemon on {name}\n"
        stderr = dest / name / "apps" / "app-7" / "0" / "stderr"
        assert stderr.read_text() == f"executor on {name}\n"
    assert not list(dest.glob(".*.tgz"))  # the downloaded tarballs are removed


def test_upload_data_to_s3_over_http_then_nothing_on_a_rerun(
    local_cloud: LocalCloud, tmp_path: Path
) -> None:
    s3 = local_cloud.s3_client()
    s3.create_bucket(Bucket="t5-data", CreateBucketConfiguration={
        "LocationConstraint": LOCAL_REGION})
    for i in range(12):
        (tmp_path / "imgs" / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / f"class{i % 3}" / f"{i}.jpg").write_bytes(b"\xff\xd8" * (100 + i))
    dest = s3path.parse("s3a://t5-data/images")
    first = transfer.upload_folder(s3, tmp_path / "imgs", dest, workers=4)
    again = transfer.upload_folder(s3, tmp_path / "imgs", dest, workers=4)
    assert (first.uploaded, again.uploaded, again.skipped) == (12, 0, 12)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="t5-data")["Contents"]]
    assert sorted(keys) == sorted(f"images/class{i % 3}/{i}.jpg" for i in range(12))
