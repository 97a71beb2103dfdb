"""The idle guard installed on a real master host (no systemd: under sparkfab-supervise),
watching a stand-in Spark master /json/ on the master's private IP. Short timeout; its
shutdown command leaves a file, so nothing is really powered off."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparkfab import idleguard, inventory, spark
from sparkfab.inventory import Inventory
from sparkfab.layout import LAYOUT
from sparkfab.localcloud import Keypair, LocalCloud, inventory_for
from sparkfab.localcloud.hosts import Host
from sparkfab.remote import Remote
from sparkfab.render import render

pytestmark = pytest.mark.timeout(180)
TIMEOUT_S = 3
APPS_FILE = "/var/lib/t5-fake-master/apps.json"
FIRED = "/var/lib/t5-guard-fired"

# Serves /json/ like a Spark master; the running apps are read from APPS_FILE per request.
FAKE_MASTER = textwrap.dedent(f"""\
    import http.server, json, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            apps = json.load(open({APPS_FILE!r}))
            body = json.dumps({{"activeapps": apps, "activedrivers": []}}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
""")


def on(host: Host, command: str) -> str:
    return subprocess.run(host.exec_argv("sh", "-c", command), check=True, capture_output=True,
                          text=True, timeout=30).stdout


def set_apps(host: Host, apps: list[dict[str, str]]) -> None:
    on(host, f"mkdir -p /var/lib/t5-fake-master && echo '{json.dumps(apps)}' > {APPS_FILE}")


@pytest.fixture
def master_host(local_cloud: LocalCloud) -> Iterator[Host]:
    host = local_cloud.hosts["master"]
    set_apps(host, [{"id": "app-1", "name": "featurize_pca"}])
    proc = subprocess.Popen(host.exec_argv("python3", "-c", FAKE_MASTER, host.ip, "8080"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        on(host, f"rm -rf /var/lib/t5-fake-master {FIRED}")


@pytest.fixture
def inv(local_cloud: LocalCloud, ssh_keypair: Keypair, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Inventory:
    monkeypatch.setattr(inventory, "INVENTORY_DIR", tmp_path / "inventory")
    hosts = [local_cloud.hosts[n] for n in ("master", "worker-1", "worker-2")]
    record = inventory_for(local_cloud, hosts, "t5",
                           private_key_path=str(ssh_keypair.private_key))
    inventory.save(record)
    inventory.known_hosts_path("t5").write_text(local_cloud.known_hosts())
    return record


def test_the_guard_waits_while_an_app_runs_then_fires_when_idle(
    inv: Inventory, master_host: Host
) -> None:
    cfg = idleguard.GuardConfig(
        cluster="t5", master_json_url=spark.master_json_url(inv),
        idle_timeout_minutes=TIMEOUT_S / 60, interval_s=1,
        shutdown_command=("touch", FIRED), python="/usr/bin/python3",
    )
    ctx = {"layout": LAYOUT.as_dict()}
    with Remote(inv, known_hosts=inventory.known_hosts_path("t5"), out=None) as remote:
        # What the Spark install leaves on every node: the service script and its supervisor.
        remote.run(inv.master, f"mkdir -p {LAYOUT.bin_dir}", step="prep")
        for name in ("sparkfab-supervise", "sparkfab-service"):
            remote.put_text(inv.master, render(f"{name}.sh", **ctx),
                            f"{LAYOUT.bin_dir}/{name}", 0o755)
        conn = remote.connection(inv.master)
        try:
            idleguard.install(conn, cfg)
            time.sleep(TIMEOUT_S + 3)  # well past the timeout, with an app running
            state = idleguard.read_state(conn)
            assert state is not None and state["active_apps"] == 1
            assert on(master_host, f"test -e {FIRED} && echo fired || echo no").strip() == "no"
            assert "1 application(s) running" in idleguard.describe(state)

            set_apps(master_host, [])  # the job ended
            deadline = time.monotonic() + TIMEOUT_S + 10
            while on(master_host, f"test -e {FIRED} && echo y || echo n").strip() != "y":
                assert time.monotonic() < deadline, idleguard.read_state(conn)
                time.sleep(0.5)
            state = idleguard.read_state(conn)
            assert state["fired_reason"] == "idle" and state["shutdown_rc"] == 0
            assert "shutdown requested" in idleguard.describe(state)
        finally:
            conn.run(f"{LAYOUT.bin_dir}/sparkfab-service stop {idleguard.UNIT}", warn=True,
                     hide=True, in_stream=False)
    supervised = on(master_host, f"{LAYOUT.bin_dir}/sparkfab-service status {idleguard.UNIT} "
                    "|| true")
    assert "stopped" in supervised
