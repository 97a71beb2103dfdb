"""remote.py's output handling, summary, SSH failure diagnosis and parallel runs; spark.py's
reading of the master's /json/; worker sizing. No network: what needs sshd is in
tests/cluster/."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from sparkfab import remote as r
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node
from sparkfab.sizing import NodeFacts, WorkerResources, worker_resources
from sparkfab.spark import parse_status, worker_problems


def _inv(tmp_path: Path, key: Path | None = None) -> Inventory:
    return Inventory(
        cluster="demo", region="eu-west-1", ssh_user="ubuntu",
        nodes=[Node(ROLE_MASTER, "i-1", "m6i.large", "10.0.0.10", "3.3.3.3", "master"),
               Node(ROLE_WORKER, "i-2", "m6i.large", "10.0.0.11", "3.3.3.4", "worker-1")],
        private_key_path=str(key or tmp_path / "id"),
    )


def test_host_stream_prefixes_lines_keeps_the_tail_and_collects_changes() -> None:
    shown: list[str] = []
    s = r._HostStream("worker-1", r._Printer(shown.append))
    s.write("one\ntw")
    s.write("o\nsparkfab-changed: /opt/spark\n")
    for i in range(30):
        s.write(f"line {i}\n")
    s.write("no newline at the end")
    s.finish()
    assert shown[:3] == ["[worker-1] one", "[worker-1] two", "[worker-1] changed: /opt/spark"]
    assert s.changes == ["/opt/spark"]
    assert len(s.tail) == r.TAIL_LINES and s.tail[-1] == "no newline at the end"


def test_summary_table_and_failure_report() -> None:
    log = r.StepLog()
    log.add(r.StepResult("master", "spark", True, 12.34, changes=["a", "b"]))
    log.add(r.StepResult("worker-1", "spark", True, 0.2))
    log.add(r.StepResult("worker-1", "packages", False, 3.0, tail=["pip: no space left"],
                         exit_code=1))
    table = log.summary().splitlines()
    assert table[0].split() == ["step", "master", "worker-1"]
    assert table[1].split() == ["spark", "12.3s", "2", "changed", "0.2s", "ok"]
    assert table[2].split() == ["packages", "-", "3.0s", "FAILED"]
    err = r.StepFailed(log.failures())
    assert "worker-1: step 'packages' failed (exit 1)" in err.message
    assert "worker-1| pip: no space left" in err.message
    assert log.changes() == {"master": ["spark: a", "spark: b"]}


def test_parallel_runs_every_node_at_once_and_reraises_after_all(tmp_path: Path) -> None:
    nodes = _inv(tmp_path).nodes
    barrier = threading.Barrier(len(nodes), timeout=5)  # deadlocks unless truly parallel
    done: list[str] = []

    def work(node: Node) -> str:
        barrier.wait()
        time.sleep(0.05)
        done.append(node.name)
        if node.name == "master":
            raise RuntimeError("master broke")
        return node.name.upper()

    with pytest.raises(RuntimeError, match="master broke"):
        r.parallel(nodes, work)
    assert sorted(done) == ["master", "worker-1"]  # the worker still finished
    assert r.parallel(nodes[1:], lambda n: n.name) == {"worker-1": "worker-1"}


def _key(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)
    return path.with_name(path.name + ".pub").read_text()


def test_auth_failure_names_the_key_or_the_user(tmp_path: Path) -> None:
    ours = _key(tmp_path / "id")
    other = _key(tmp_path / "other")
    inv = _inv(tmp_path)
    kh = tmp_path / "known_hosts"
    wrong_key = r.Remote(inv, known_hosts=kh, expected_public_key=other)._auth_error(inv.master)
    assert "wrong key" in wrong_key.message and "public_key_path" in wrong_key.hint
    wrong_user = r.Remote(inv, known_hosts=kh, expected_public_key=ours)._auth_error(inv.master)
    assert "user is likely wrong" in wrong_user.message and "ubuntu" in wrong_user.hint
    unknown = r.Remote(inv, known_hosts=kh)._auth_error(inv.master)
    assert "wrong key" in unknown.message and "wrong user (ubuntu)" in unknown.message


def test_missing_known_hosts_is_refused_before_connecting(tmp_path: Path) -> None:
    _key(tmp_path / "id")
    inv = _inv(tmp_path)
    remote = r.Remote(inv, known_hosts=tmp_path / "absent", out=None)
    with pytest.raises(r.SshError, match="no known_hosts file"):
        remote.connection(inv.master)
    result = remote.run(inv.master, "true", step="x")
    assert not result.ok and "no known_hosts file" in result.error


class _UnknownKeyConn:
    """A connection whose host key is missing from known_hosts at its first open; the
    `record` callable runs during that open, as provision records a key mid-connect."""

    def __init__(self, record) -> None:  # noqa: ANN001
        self.record = record

    def open(self) -> None:
        self.record()
        raise paramiko.SSHException("Server '10.0.0.10' not found in known_hosts")


def test_a_host_key_recorded_during_the_connect_is_read_before_refusing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _key(tmp_path / "id")
    inv = _inv(tmp_path)
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    remote = r.Remote(inv, known_hosts=kh, out=None)
    opened = SimpleNamespace(open=lambda: None, is_connected=True)
    attempts: list[str] = []

    def new_connection(node: Node):  # noqa: ANN202
        attempts.append(kh.read_text())
        if len(attempts) == 1:  # the key lands while the first handshake is under way
            return _UnknownKeyConn(lambda: kh.write_text("10.0.0.10 ssh-ed25519 AAAA\n"))
        if len(attempts) == 2:
            return opened
        raise AssertionError("a third connection")

    monkeypatch.setattr(remote, "_new_connection", new_connection)
    assert remote.connection(inv.master) is opened
    assert attempts == ["", "10.0.0.10 ssh-ed25519 AAAA\n"]

    # A key that stays unknown is refused at once, not retried.
    kh2 = tmp_path / "known_hosts2"
    kh2.write_text("")
    still = r.Remote(inv, known_hosts=kh2, out=None)
    monkeypatch.setattr(still, "_new_connection", lambda node: _UnknownKeyConn(lambda: None))
    with pytest.raises(r.SshError, match="refusing to trust an unknown key"):
        still.connection(inv.master)


def test_boot_errors_are_retried_but_not_others() -> None:
    refused = paramiko.ssh_exception.NoValidConnectionsError(
        {("10.0.0.1", 22): ConnectionRefusedError(111, "refused")})
    assert r._is_boot_error(refused)
    assert r._reason(refused) == "connection refused"
    assert r._is_boot_error(TimeoutError())
    assert r._is_boot_error(paramiko.SSHException("Error reading SSH protocol banner"))
    assert not r._is_boot_error(paramiko.SSHException("Incompatible ssh peer"))
    assert not r._is_boot_error(PermissionError(13, "denied"))


MASTER_JSON = {
    "status": "ALIVE",
    "workers": [
        {"host": "10.0.0.11", "state": "DEAD", "cores": 4, "coresused": 0,
         "memory": 14000, "memoryused": 0},
        {"host": "10.0.0.11", "state": "ALIVE", "cores": 4, "coresused": 4,
         "memory": 14000, "memoryused": 2048},
        {"host": "10.0.0.12", "state": "ALIVE", "cores": 2, "coresused": 0,
         "memory": 14000, "memoryused": 0},
    ],
    "activeapps": [{"id": "app-1", "name": "featurize"}],
    "completedapps": [{}, {}],
}


def test_worker_problems_compare_alive_workers_with_their_configuration() -> None:
    want = WorkerResources(4, 14000)
    assert worker_problems(MASTER_JSON, {"10.0.0.11": want}) == {}
    problems = worker_problems(MASTER_JSON, {"10.0.0.12": want, "10.0.0.13": want})
    assert problems["10.0.0.12"] == "offers 2 cores / 14000 MB, configured 4 / 14000 MB"
    assert problems["10.0.0.13"] == "not ALIVE (seen: never registered)"


def test_status_lines_for_fab_status(tmp_path: Path) -> None:
    status = parse_status(_inv(tmp_path), MASTER_JSON)
    lines = status.lines()
    assert lines[0] == "spark: master spark://10.0.0.10:7077 ALIVE, 1 of 1 workers ALIVE"
    assert ("  worker worker-1 (10.0.0.11): ALIVE, cores 4/4 used, memory 2048/14000 MB used"
            in lines)
    assert lines[-1] == "  applications running: featurize (app-1); completed: 2"


# A master that has seen restarts and a stranger: worker-1 re-registered twice (two DEAD
# entries left behind), worker-2 died and is not back, 10.0.0.99 is no node of ours.
RESTARTED_JSON = {
    "status": "ALIVE",
    "workers": [
        {"host": "10.0.0.11", "state": "DEAD", "cores": 4, "coresused": 0,
         "memory": 14000, "memoryused": 0},
        {"host": "10.0.0.12", "state": "DEAD", "cores": 4, "coresused": 0,
         "memory": 14000, "memoryused": 0},
        {"host": "10.0.0.11", "state": "DEAD", "cores": 4, "coresused": 0,
         "memory": 14000, "memoryused": 0},
        {"host": "10.0.0.11", "state": "ALIVE", "cores": 4, "coresused": 2,
         "memory": 14000, "memoryused": 1024},
        {"host": "10.0.0.99", "state": "ALIVE", "cores": 8, "coresused": 0,
         "memory": 30000, "memoryused": 0},
        {"host": "10.0.0.12", "state": "DEAD", "cores": 4, "coresused": 0,
         "memory": 14000, "memoryused": 0},
    ],
    "activeapps": [], "completedapps": [],
}


def test_status_counts_only_the_inventorys_workers_alive_now(tmp_path: Path) -> None:
    inv = _inv(tmp_path)
    inv.nodes.append(Node(ROLE_WORKER, "i-3", "m6i.large", "10.0.0.12", None, "worker-2"))
    status = parse_status(inv, RESTARTED_JSON)
    assert status.alive_workers == 1
    assert [(w.name, w.host, w.state) for w in status.workers] == [
        ("worker-1", "10.0.0.11", "ALIVE"), ("worker-2", "10.0.0.12", "DEAD")]
    assert status.unknown_hosts == ["10.0.0.99"]
    lines = status.lines()
    assert lines[0] == "spark: master spark://10.0.0.10:7077 ALIVE, 1 of 2 workers ALIVE"
    assert "  worker worker-2 (10.0.0.12): DEAD, cores 0/0 used, memory 0/0 MB used" in lines
    assert ("  also registered, not in the inventory (not counted): 10.0.0.99" in lines)
    # The install's health check reads the same document the same way.
    want = WorkerResources(4, 14000)
    assert worker_problems(RESTARTED_JSON, {"10.0.0.11": want, "10.0.0.12": want}) == {
        "10.0.0.12": "not ALIVE (seen: DEAD, DEAD)"}
    inv.nodes.append(Node(ROLE_WORKER, "i-4", "m6i.large", "10.0.0.13", None, "worker-3"))
    never = parse_status(inv, RESTARTED_JSON).workers[-1]
    assert (never.name, never.state) == ("worker-3", "NOT_REGISTERED")


def test_worker_sizing_keeps_a_reserve_and_obeys_overrides() -> None:
    facts = NodeFacts.parse("4 16010204 systemd")
    assert facts == NodeFacts(4, 15634, True)
    assert worker_resources(facts) == WorkerResources(4, 15634 - 1563)
    small = NodeFacts(2, 4000, False)
    assert worker_resources(small).memory_mb == 4000 - 1024
    override = SimpleNamespace(worker_cores=1, worker_memory_mb=1024)
    assert worker_resources(facts, override) == WorkerResources(1, 1024)
    with pytest.raises(UserError, match="only"):
        worker_resources(NodeFacts(1, 1200, False))


@pytest.mark.parametrize("user", ["admin", "root"])
def test_a_compound_command_runs_whole_as_root(user: str, tmp_path: Path) -> None:
    """The shrink's drain commands are `if ...; fi`: under `sudo -n CMD` they were a syntax
    error for every login user but root (seen on the booted Debian nodes)."""
    from sparkfab import shrink

    shim = tmp_path / "bin"
    shim.mkdir()
    # sudo as the node's would run it, less the privilege: `sudo -n ARGV` execs ARGV.
    (shim / "sudo").write_text('#!/bin/sh\n[ "$1" = -n ] || exit 9\nshift\nexec "$@"\n')
    (shim / "sudo").chmod(0o755)
    inv = _inv(tmp_path)
    inv.ssh_user = user
    remote = r.Remote(inv, known_hosts=tmp_path / "known_hosts")
    env = {"PATH": f"{shim}:/usr/bin:/bin"}
    for command, expected in [
        ("if [ 1 = 1 ]; then echo yes; fi && echo 'both sides'", "yes\nboth sides\n"),
        (shrink.worker_state_command(inv.workers[0]), "no-worker\n"),
        (shrink.decommission_command(), "no-decommission\n"),
    ]:
        ran = subprocess.run(["bash", "-c", remote.as_root(command)], capture_output=True,
                             text=True, env=env, timeout=30)
        assert (ran.returncode, ran.stdout) == (0, expected), ran.stderr
