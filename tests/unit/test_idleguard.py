"""The idle guard, for real: the rendered script run by Python against a fake Spark master
/json/ on loopback, with a timeout of about a second. Its shutdown command writes a file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sparkfab import idleguard
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node

TIMEOUT_S = 2  # whole seconds: the guard counts in seconds


class FakeMaster:
    """Serves /json/ like a Spark master: `activeapps` is whatever the test sets."""

    def __init__(self) -> None:
        self.active: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != "/json/":
                    self.send_error(404)
                    return
                body = json.dumps({
                    "url": "spark://127.0.0.1:7077", "aliveworkers": 2,
                    "activeapps": fake.active, "completedapps": [], "activedrivers": [],
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/json/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def master() -> Iterator[FakeMaster]:
    fake = FakeMaster()
    try:
        yield fake
    finally:
        fake.stop()


class Guard:
    """The rendered guard; its shutdown appends to a file, its `who` reads a file."""

    def __init__(self, tmp: Path, url: str, hard_deadline: int = 0) -> None:
        self.fired = tmp / "shutdown-ran"
        self.logins = tmp / "who.txt"
        self.logins.write_text("")
        self.state_file = tmp / "state" / "idle-guard.json"
        cfg = idleguard.GuardConfig(
            cluster="t5", master_json_url=url, idle_timeout_minutes=TIMEOUT_S / 60,
            hard_deadline=hard_deadline, interval_s=1, state_file=str(self.state_file),
            shutdown_command=(sys.executable, "-c",
                              f"open({str(self.fired)!r}, 'a').write('x')"),
            sessions_command=("cat", str(self.logins)),
            python=sys.executable,
        )
        self.script = tmp / "sparkfab-idle-guard"
        self.script.write_text(idleguard.render_script(cfg))
        self.script.chmod(0o755)

    def once(self) -> dict:
        # Run as the node runs it: executable, through its shebang (the node's Python).
        subprocess.run([str(self.script), "--once"], check=True, capture_output=True,
                       timeout=30)
        return json.loads(self.state_file.read_text())

    def shutdowns(self) -> int:
        return len(self.fired.read_text()) if self.fired.exists() else 0


def test_fires_after_the_timeout_when_idle(master: FakeMaster, tmp_path: Path) -> None:
    guard = Guard(tmp_path, master.url)
    first = guard.once()
    assert guard.shutdowns() == 0 and first["active_apps"] == 0
    assert first["deadline"] == pytest.approx(first["checked_at"] + TIMEOUT_S, abs=0.01)
    time.sleep(TIMEOUT_S + 0.2)
    state = guard.once()
    assert guard.shutdowns() == 1
    assert state["fired_reason"] == "idle" and state["shutdown_rc"] == 0
    guard.once()
    assert guard.shutdowns() == 1  # once per deadline, not every minute after


def test_does_not_fire_while_an_app_runs_and_restarts_the_clock_after(
    master: FakeMaster, tmp_path: Path
) -> None:
    guard = Guard(tmp_path, master.url)
    master.active = [{"id": "app-20261122-0001", "name": "featurize_pca", "state": "RUNNING"}]
    started = time.time()
    while time.time() - started < TIMEOUT_S * 1.5:
        state = guard.once()
        time.sleep(0.3)
    assert guard.shutdowns() == 0
    assert state["active_apps"] == 1 and state["deadline"] > time.time()

    master.active = []  # the job ended: the clock runs from the last check that saw it
    state = guard.once()
    assert guard.shutdowns() == 0
    assert state["last_busy_at"] > started + TIMEOUT_S  # long past the first deadline
    assert state["deadline"] == pytest.approx(state["last_busy_at"] + TIMEOUT_S)
    time.sleep(TIMEOUT_S + 0.2)
    guard.once()
    assert guard.shutdowns() == 1


def test_a_master_that_does_not_answer_counts_as_idle(tmp_path: Path) -> None:
    fake = FakeMaster()
    url = fake.url
    fake.stop()  # nothing listens there any more
    guard = Guard(tmp_path, url)
    assert guard.once()["master_reachable"] is False
    time.sleep(TIMEOUT_S + 0.2)
    guard.once()
    assert guard.shutdowns() == 1


def test_an_interactive_login_keeps_the_cluster_up(master: FakeMaster, tmp_path: Path) -> None:
    guard = Guard(tmp_path, master.url)
    guard.logins.write_text("ubuntu   pts/0        2026-11-22 10:02 (203.0.113.7)\n")
    guard.once()
    time.sleep(TIMEOUT_S + 0.2)
    state = guard.once()
    assert guard.shutdowns() == 0 and state["ssh_sessions"] == 1
    guard.logins.write_text("")  # logged out: the clock runs from the last check that saw it
    time.sleep(TIMEOUT_S + 0.2)
    guard.once()
    assert guard.shutdowns() == 1


def test_max_lifetime_fires_even_while_busy(master: FakeMaster, tmp_path: Path) -> None:
    master.active = [{"id": "app-1"}]
    guard = Guard(tmp_path, master.url, hard_deadline=int(time.time()) - 1)
    state = guard.once()
    assert guard.shutdowns() == 1 and state["fired_reason"] == "max lifetime"


def test_loop_mode_fires_without_systemd(master: FakeMaster, tmp_path: Path) -> None:
    guard = Guard(tmp_path, master.url)
    proc = subprocess.Popen([str(guard.script)],  # no flag: the loop, as supervise runs it
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + TIMEOUT_S + 5
        while guard.shutdowns() == 0 and time.time() < deadline:
            time.sleep(0.2)
        assert guard.shutdowns() == 1
        assert proc.poll() is None  # still watching: a new deadline may come
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "shutting down" in out


def inventory() -> Inventory:
    return Inventory(
        cluster="t5", region="eu-west-3", ssh_user="ubuntu",
        nodes=[
            Node(ROLE_MASTER, "i-m", "t3.large", "10.0.1.10", "3.3.3.3", "master",
                 launched_at="2026-11-22T10:00:00+00:00"),
            Node(ROLE_WORKER, "i-w", "t3.large", "10.0.1.11", None, "worker-1"),
        ],
    )


def test_config_watches_the_private_ip_and_sets_the_max_lifetime() -> None:
    cfg = idleguard.config_for(inventory(), idle_timeout_minutes=30, max_lifetime_hours=2)
    assert cfg.master_json_url == "http://10.0.1.10:8080/json/"
    assert cfg.hard_deadline == 1795341600 + 2 * 3600  # 2026-11-22T10:00Z + 2 h
    assert cfg.shutdown_command == ("shutdown", "-h", "now")
    booted = inventory()
    booted.extra["local_cloud"] = "/work/.cache/localcloud/sf"  # machines with own kernels
    assert idleguard.config_for(booted, 30).shutdown_command == ("shutdown", "-h", "now")
    shared = inventory()
    # The sshd hosts share this machine's kernel: never power it off.
    shared.extra.update(local_cloud="sf", shared_kernel=True)
    assert idleguard.config_for(shared, 30).shutdown_command == (
        "/opt/sparkfab/bin/sparkfab-service", "stop", "spark-master")
    with pytest.raises(UserError, match="idle timeout"):
        idleguard.config_for(inventory(), idle_timeout_minutes=0)


def test_systemd_units_run_the_script_every_minute() -> None:
    cfg = idleguard.config_for(inventory(), idle_timeout_minutes=30)
    units = idleguard.render_units(cfg)
    service = units["/etc/systemd/system/sparkfab-idle-guard.service"]
    timer = units["/etc/systemd/system/sparkfab-idle-guard.timer"]
    assert "ExecStart=/opt/sparkfab/bin/sparkfab-idle-guard --once" in service
    assert "OnUnitActiveSec=60s" in timer and "WantedBy=timers.target" in timer
    script = idleguard.render_script(cfg)
    assert script.startswith("#!/opt/sparkfab/python/bin/python\n")  # the node's Python
    compile(script, "idle-guard.py", "exec")  # the rendered file is valid Python


def test_describe_shows_the_time_left() -> None:
    now = 1_800_000_000.0
    idle = {"checked_at": now - 30, "active_apps": 0, "last_busy_at": now - 600,
            "idle_timeout_s": 1800, "deadline": now - 600 + 1800, "deadline_reason": "idle"}
    assert "shutdown in 20 min" in idleguard.describe(idle, now)
    busy = dict(idle, active_apps=1, last_busy_at=now - 30, deadline=now - 30 + 1800)
    line = idleguard.describe(busy, now)
    assert "1 application(s) running" in line and "shutdown in 30 min" in line
    stale = dict(idle, checked_at=now - 3 * 3600)
    assert "may be down" in idleguard.describe(stale, now)
    assert "no report yet" in idleguard.describe(None, now)


class _RecordingConnection:
    """A Fabric-like connection that records uploads and commands; `mktemp` answers."""

    def __init__(self, user: str, made: str = ".sparkfab/idle-guard.Ab3dE6gH") -> None:
        self.user, self.made = user, made
        self.commands: list[str] = []
        self.uploads: dict[str, bytes] = {}

    def run(self, command: str, **kw: object) -> object:
        from types import SimpleNamespace

        self.commands.append(command)
        out = self.made + "\n" if "mktemp -d" in command else ""
        return SimpleNamespace(ok=True, exited=0, stdout=out, stderr="")

    def put(self, local: object, remote: str) -> None:
        self.uploads[remote] = local.read()  # type: ignore[attr-defined]


def test_the_guard_is_staged_in_a_fresh_private_folder_never_in_tmp(tmp_path: Path) -> None:
    conn = _RecordingConnection("ubuntu")
    cfg = idleguard.GuardConfig("demo", "http://10.0.0.4:8080/json/", 60)
    idleguard.install(conn, cfg)
    # A new folder under the SSH user's 0700 ~/.sparkfab, made by mktemp -d...
    assert conn.commands[0].startswith("mkdir -p -m 0700 .sparkfab && chmod 0700 .sparkfab")
    assert conn.commands[0].endswith("mktemp -d .sparkfab/idle-guard.XXXXXXXX")
    assert sorted(conn.uploads) == sorted(f"{conn.made}/{Path(p).name}" for p in
                                          [idleguard.SCRIPT_PATH, *idleguard.render_units(cfg)])
    installs = [c for c in conn.commands if " install -D " in f" {c}"]
    assert len(installs) == 3 and all(c.startswith("sudo -n install -D -m 0") for c in installs)
    # ... removed afterwards; nothing ever passes through a shared /tmp.
    assert f"rm -rf {conn.made}" in conn.commands
    assert not [c for c in conn.commands if "/tmp" in c]
    assert not [p for p in conn.uploads if p.startswith("/")]


def test_a_staging_folder_not_made_by_mktemp_is_refused() -> None:
    conn = _RecordingConnection("root", made="/tmp/sparkfab-idle")
    with pytest.raises(UserError, match="staging folder"):
        idleguard.install(conn, idleguard.GuardConfig("demo", "http://10.0.0.4:8080/json/", 60))
    assert conn.uploads == {}
