"""The local cloud itself: hosts answer SSH, keep their files apart, and vanish on down()."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER
from sparkfab.localcloud import Keypair, LocalCloud, inventory_for
from sparkfab.localcloud import netns as nets

pytestmark = pytest.mark.timeout(120)
SshRunner = Callable[..., subprocess.CompletedProcess[str]]
CloudMaker = Callable[..., LocalCloud]


def test_each_host_answers_ssh_as_root_on_its_private_ip(
    local_cloud: LocalCloud, ssh: SshRunner
) -> None:
    assert sorted(local_cloud.hosts) == ["master", "worker-1", "worker-2"]
    for host in local_cloud.hosts.values():
        out = ssh(host, "id -un; ip -4 -o addr show dev eth0")
        assert out.returncode == 0, out.stderr
        user, addr = out.stdout.splitlines()
        assert user == "root"
        assert f"inet {host.ip}/24" in addr


def test_a_key_not_authorized_is_refused(
    local_cloud: LocalCloud, ssh: SshRunner, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    out = ssh(local_cloud.hosts["master"], "true", key=other)
    assert out.returncode == 255
    assert "Permission denied (publickey)" in out.stderr


def test_a_host_key_that_does_not_match_is_refused(
    local_cloud: LocalCloud, ssh: SshRunner, tmp_path: Path
) -> None:
    master, worker = local_cloud.hosts["master"], local_cloud.hosts["worker-1"]
    # The worker's key listed for the master's address: a client must not connect.
    forged = tmp_path / "known_hosts"
    forged.write_text(worker.host_public_key.replace(worker.ip, master.ip, 1) + "\n")
    out = ssh(master, "true", known_hosts=forged)
    assert out.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in out.stderr


def test_files_written_on_one_node_stay_on_that_node(
    local_cloud: LocalCloud, ssh: SshRunner
) -> None:
    master, worker = local_cloud.hosts["master"], local_cloud.hosts["worker-1"]
    mark = f"sparkfab-{uuid.uuid4().hex}"
    paths = [
        f"/opt/{mark}",
        f"/etc/{mark}",
        f"/var/{mark}",
        f"/tmp/{mark}",
        f"/root/{mark}",
        f"/home/{mark}",
        f"/run/{mark}",
    ]
    wrote = ssh(master, " && ".join(f"echo {mark} > {p}" for p in paths) + f" && cat {paths[0]}")
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.strip() == mark
    seen = ssh(worker, "; ".join(f"test -e {p} && echo {p}" for p in paths) + "; true")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout == "", f"visible on {worker.name}: {seen.stdout}"
    assert not any(Path(p).exists() for p in paths), "a node wrote onto the real machine"
    # The overlays still show the machine's own files underneath (apt/dpkg state, users).
    base = ssh(worker, "test -s /var/lib/dpkg/status && grep -c '^root:' /etc/passwd")
    assert base.stdout.strip() == "1", base.stderr


def test_moto_is_reachable_from_inside_a_node(local_cloud: LocalCloud) -> None:
    worker = local_cloud.hosts["worker-2"]
    url = f"{local_cloud.moto_endpoint}/moto-api/"
    out = subprocess.run(
        worker.exec_argv("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout == "200", out.stderr


def test_add_host_rejects_addresses_outside_the_subnet(
    local_cloud: LocalCloud, ssh_keypair: Keypair
) -> None:
    before = nets.list_namespaces()
    with pytest.raises(UserError, match="not a free host address"):
        local_cloud.add_host("stray", "192.0.2.7", [ssh_keypair.public_key])
    with pytest.raises(UserError, match="already"):
        local_cloud.add_host("master", None, [ssh_keypair.public_key])
    assert nets.list_namespaces() == before


def test_inventory_for_names_a_master_and_the_workers(local_cloud: LocalCloud) -> None:
    hosts = [local_cloud.hosts[n] for n in ("master", "worker-1", "worker-2")]
    inv = inventory_for(local_cloud, hosts, "t1", bucket="b")
    assert inv.master.private_ip == hosts[0].ip and inv.master.role == ROLE_MASTER
    assert [w.private_ip for w in inv.workers] == [h.ip for h in hosts[1:]]
    assert all(w.role == ROLE_WORKER for w in inv.workers)
    assert [inv.address(n) for n in inv.nodes] == [h.ip for h in hosts]
    assert inv.endpoint_url == local_cloud.moto_endpoint and inv.ssh_user == "root"
    assert len(inv.spark_secret) >= 32
    assert inventory_for(local_cloud, hosts, "t1").spark_secret != inv.spark_secret


def _everything_of(cloud: LocalCloud) -> tuple[list[int], list[str]]:
    """Pids and Linux names the cloud owns right now."""
    pids = [
        p
        for ns in nets.list_namespaces()
        if ns.startswith(f"{cloud.prefix}-")
        for p in nets.namespace_pids(ns)
    ]
    if cloud.moto_pid:
        pids.append(cloud.moto_pid)
    names = [ns for ns in nets.list_namespaces() if ns.startswith(f"{cloud.prefix}-")]
    names += [cloud.names.bridge] if nets.link_exists(cloud.names.bridge) else []
    return pids, names


def _assert_gone(cloud: LocalCloud, pids: list[int]) -> None:
    assert [p for p in pids if nets.pid_alive(p)] == []
    assert [ns for ns in nets.list_namespaces() if ns.startswith(f"{cloud.prefix}-")] == []
    assert not nets.link_exists(cloud.names.bridge)
    assert not (cloud.workdir / "nodes").exists()


def test_down_stops_every_process_and_removes_every_name(
    local_cloud_factory: Callable[[], LocalCloud], ssh_keypair: Keypair, ssh: SshRunner
) -> None:
    cloud = local_cloud_factory()
    a = cloud.add_host("a", None, [ssh_keypair.public_key])
    cloud.add_host("b", None, [ssh_keypair.public_key])
    cloud.start_moto()
    # A daemon started over SSH, detached from the session: it must die with its host.
    started = ssh(a, "setsid nohup sleep 600 >/dev/null 2>&1 < /dev/null & echo $!")
    assert started.returncode == 0, started.stderr
    pids, names = _everything_of(cloud)
    assert int(started.stdout.strip()) in pids
    assert {a.sshd_pid, cloud.hosts["b"].sshd_pid, cloud.moto_pid} <= set(pids)
    assert len(names) == 3  # two namespaces and the bridge
    cloud.down()
    _assert_gone(cloud, pids)
    cloud.down()  # a second call is harmless


def test_cleanup_happens_when_the_body_raises(
    ssh_keypair: Keypair, cloud_maker: CloudMaker
) -> None:
    cloud = cloud_maker("r", 2)
    pids: list[int] = []
    with pytest.raises(ZeroDivisionError), cloud:
        cloud.add_host("a", None, [ssh_keypair.public_key])
        cloud.start_moto()
        pids = _everything_of(cloud)[0]
        1 / 0  # noqa: B018
    assert len(pids) >= 2
    _assert_gone(cloud, pids)


def test_a_killed_run_is_swept_by_the_next_one(
    ssh_keypair: Keypair, cloud_maker: CloudMaker
) -> None:
    cloud = cloud_maker("k", 3)
    # Another process brings the same cloud up and is killed with SIGKILL: no cleanup runs.
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from sparkfab.localcloud import LocalCloud
        c = LocalCloud({cloud.prefix!r}, {str(cloud.subnet)!r}, Path({str(cloud.workdir)!r}))
        c.up()
        c.add_host("a", None, [{ssh_keypair.public_key!r}])
        c.start_moto()
        print(c.hosts["a"].sshd_pid, c.moto_pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    left = [int(p) for p in out.stdout.split()]
    assert all(nets.pid_alive(p) for p in left)
    assert nets.link_exists(cloud.names.bridge)
    with cloud:
        assert [p for p in left if nets.pid_alive(p)] == []
        assert nets.list_namespaces().count(f"{cloud.prefix}-a") == 0
    _assert_gone(cloud, left)
