"""Nodes that power themselves off end their instances, as on EC2: the max-lifetime timer and
the master-gone timer (sparkfab's user data) and the idle guard, each on a booted machine
whose instance moto then shows terminated (shutdown behaviour `terminate`).

The lifetime is 90 s and the master-gone limit one minute, so each fires at its timer's
second run (~2 min after boot); the idle guard fires seconds after it finds no application.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLOUD_ROOT, PREFIX, SUBNET, leftovers, operator_ssh_group

from sparkfab import hostkeys, idleguard, inventory
from sparkfab.aws.instances import ORPHAN_MINUTES
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node
from sparkfab.localcloud import Keypair, derived_subnet, target, watcher
from sparkfab.remote import Remote
from sparkfab.render import render

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PREFIX_P = f"{PREFIX}p7"
SUBNET_P = derived_subnet(SUBNET, 7)
LIFETIME_S = 90
KEY = "power-off-test"
# Serves /json/ like a Spark master with no application running.
FAKE_MASTER = textwrap.dedent("""\
    import http.server, json, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"activeapps": [], "activedrivers": []}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
""")


def _until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _state(ec2: Any, iid: str) -> str:
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return str(inst["State"]["Name"])


@pytest.fixture(scope="module")
def cloud() -> Iterator[tuple[target.CloudInfo, target.Placement]]:
    workdir = target.workdir_for(PREFIX_P, CLOUD_ROOT)
    info = target.start_watcher(PREFIX_P, SUBNET_P, workdir, print)
    try:
        yield info, target.prepare_account(info, print)
    finally:
        target.stop_watcher(workdir, print)
        assert leftovers(PREFIX_P) == []


def _launch(info: target.CloudInfo, placement: target.Placement, user_data: str,
            group: str) -> str:
    ec2 = info.client("ec2")
    return str(ec2.run_instances(
        ImageId=placement.ami_id, MinCount=1, MaxCount=1, InstanceType="m6i.large",
        KeyName=KEY, SubnetId=placement.subnet_id, UserData=user_data,
        SecurityGroupIds=[group],
        InstanceInitiatedShutdownBehavior="terminate")["Instances"][0]["InstanceId"])


def _user_data(role: str, lifetime_s: int, master_ip: str | None) -> str:
    return render("user-data.sh", cluster="powertest", role=role, max_lifetime_s=lifetime_s,
                  master_ip=master_ip, orphan_minutes=1)


def test_lifetime_master_gone_and_idle_guard_each_terminate_their_instance(
    cloud: tuple[target.CloudInfo, target.Placement], ssh_keypair: Keypair, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info, placement = cloud
    ec2 = info.client("ec2")
    ec2.import_key_pair(KeyName=KEY, PublicKeyMaterial=ssh_keypair.public_key.encode())
    assert ORPHAN_MINUTES > 1  # the real limit; the test renders the user data with 1
    group = operator_ssh_group(ec2, placement.subnet_id, info.bridge_ip, KEY)
    t0 = time.monotonic()
    lifetime = _launch(info, placement, _user_data(ROLE_MASTER, LIFETIME_S, None), group)
    # A worker whose master's address answers nothing: gone from the start.
    nobody = SUBNET_P.rsplit(".", 1)[0] + ".250"
    orphan = _launch(info, placement, _user_data(ROLE_WORKER, 3600, nobody), group)
    idle = _launch(info, placement, _user_data(ROLE_MASTER, 3600, None), group)

    # The idle guard on `idle`, installed over SSH as provisioning does (keys from console).
    ip = ec2.describe_instances(InstanceIds=[idle])["Reservations"][0]["Instances"][0][
        "PrivateIpAddress"]
    monkeypatch.setattr(inventory, "INVENTORY_DIR", tmp_path)
    inv = Inventory("powertest", info.region, "admin",
                    [Node(ROLE_MASTER, idle, "m6i.large", ip, None, "master")],
                    ssh_address="private", private_key_path=str(ssh_keypair.private_key))
    inventory.save(inv)
    known = inventory.known_hosts_path("powertest")
    known.write_text(hostkeys.from_console(ec2, inv, print, timeout_s=180, poll_s=1))
    cfg = idleguard.GuardConfig(cluster="powertest", master_json_url=f"http://{ip}:8080/json/",
                                idle_timeout_minutes=0.1, interval_s=5,
                                python="/usr/bin/python3")
    with Remote(inv, known_hosts=known, out=None) as remote:
        conn = remote.connection(inv.master)
        conn.run("cloud-init status --wait >/dev/null || true", hide=True)
        conn.put(__import__("io").BytesIO(FAKE_MASTER.encode()), "/tmp/fake_master.py")
        conn.run(f"sudo -n systemd-run --unit fake-master python3 /tmp/fake_master.py {ip} 8080",
                 hide=True)
        idleguard.install(conn, cfg)
    _until(lambda: _state(ec2, idle) == "terminated", "the idle guard's shutdown", 180)
    idle_s = time.monotonic() - t0

    _until(lambda: _state(ec2, lifetime) == "terminated", "the max lifetime", 300)
    lifetime_s = time.monotonic() - t0
    _until(lambda: _state(ec2, orphan) == "terminated", "the master-gone shutdown", 300)
    log = (info.workdir / watcher.LOG_FILE).read_text()
    for iid in (lifetime, orphan, idle):
        assert f"instance {iid}: powered itself off; shutdown behaviour 'terminate'" in log
    # The lifetime node went at its deadline, not before.
    assert lifetime_s >= LIFETIME_S
    print(f"\nfigure: idle guard off after {idle_s:.0f}s, lifetime ({LIFETIME_S}s) after "
          f"{lifetime_s:.0f}s, master gone after {time.monotonic() - t0:.0f}s")
