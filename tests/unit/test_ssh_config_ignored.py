"""Every SSH connection sparkfab makes ignores the user's ssh_config: a `ForwardAgent yes`
there must never hand a node (or whoever controls one) the operator's agent.

The system `ssh` of `fab ssh` / `fab ui` is checked with `ssh -G` (it prints the settings
ssh would use, without connecting); Fabric's connections for the install and jobs by
building them under a HOME whose ~/.ssh/config asks for everything dangerous."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fabric import Connection

from sparkfab import inventory, sshcli, tunnel
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Inventory, Node
from sparkfab.remote import Remote

HOSTILE_SSH_CONFIG = """\
Host *
    ForwardAgent yes
    ForwardX11 yes
    ForwardX11Trusted yes
    PermitLocalCommand yes
    LocalCommand touch /tmp/sparkfab-local-command
    LocalForward 127.0.0.1:47999 127.0.0.1:22
    ProxyCommand nc %h %p
    User intruder
    Port 2222
"""


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
        ],
    )
    inventory.save(cluster)
    inventory.known_hosts_path("demo").write_text("3.3.3.3 ssh-ed25519 AAAA\n")
    return cluster


def _resolved(argv: list[str], config: Path) -> dict[str, list[str]]:
    """What `ssh` would use for argv if `config` were the user's ~/.ssh/config (ssh -G)."""
    assert argv[0] == "ssh"
    i = argv.index("-F")
    argv = [argv[0], "-G", *argv[1:i + 1], str(config), *argv[i + 2:]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    resolved: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        resolved.setdefault(key, []).append(value)
    return resolved


def test_the_system_ssh_reads_no_config_and_forwards_no_agent(
        inv: Inventory, tmp_path: Path) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client on this machine (apt-get install openssh-client)")
    shell = sshcli.shell_argv(inv, inv.master)
    command = sshcli.shell_argv(inv, inv.master, "uptime")
    forward = tunnel.ssh_argv(inv, tunnel.plan(inv))
    hostile = tmp_path / "ssh_config"
    hostile.write_text(HOSTILE_SSH_CONFIG)
    for argv in (shell, command, forward):
        # No configuration file at all: neither ~/.ssh/config nor /etc/ssh/ssh_config.
        assert argv[argv.index("-F") + 1] == "none"
        assert argv.index("-F") < argv.index("3.3.3.3")
        # And were one read anyway, the command line's own settings win.
        got = _resolved(argv, hostile)
        assert got["forwardagent"] == ["no"] and got["forwardx11"] == ["no"]
        assert got["permitlocalcommand"] == ["no"]
        assert got["user"] == ["ubuntu"]
    for argv in (shell, command):  # a shell has no forwards at all
        assert _resolved(argv, hostile)["clearallforwardings"] == ["yes"]
    specs = [forward[i + 1] for i, a in enumerate(forward) if a == "-L"]
    assert len(specs) == 3 and all(s.startswith("127.0.0.1:") for s in specs)


def test_fabric_connections_ignore_the_users_ssh_config(
        inv: Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(HOSTILE_SSH_CONFIG)
    monkeypatch.setenv("HOME", str(home))
    # The file is live: a Connection built the default way takes all of it.
    default = Connection("3.3.3.3")
    assert default.forward_agent is True and default.port == 2222
    assert default.user == "intruder" and default.gateway == "nc 3.3.3.3 2222"

    remote = Remote(inv, known_hosts=inventory.known_hosts_path("demo"), out=None)
    for node in inv.nodes:
        conn = remote._new_connection(node)
        assert conn.forward_agent is False
        assert (conn.user, conn.port, conn.gateway) == ("ubuntu", 22, None)
        assert conn.connect_kwargs["allow_agent"] is False
        assert conn.connect_kwargs["look_for_keys"] is False
