"""Booted machines: the Debian image under systemd-nspawn, as the local cloud's instances."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CLOUD_ROOT, PREFIX, SUBNET

from sparkfab import hostkeys
from sparkfab.localcloud import (
    Keypair,
    LocalCloud,
    derived_subnet,
    image,
    machines,
    nat,
    netns,
)

pytestmark = pytest.mark.timeout(600)
PREFIX_M = f"{PREFIX}m6"
SUBNET_M = derived_subnet(SUBNET, 6)
USER_DATA = b"""#!/bin/bash
echo "user data ran as $(id -un)" > /var/tmp/user-data-ran
"""


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _ssh(ip: str, key: Path, known_hosts: Path, command: str,
         user: str = image.DEFAULT_USER) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key), "-F", "/dev/null", "-o", "BatchMode=yes",
         "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", f"{user}@{ip}", command],
        capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def cloud_and_provider() -> Iterator[tuple[LocalCloud, machines.NspawnProvider]]:
    path = image.ensure_image()
    cloud = LocalCloud(PREFIX_M, SUBNET_M, workdir=CLOUD_ROOT / PREFIX_M)
    with cloud:
        nat.add(PREFIX_M, str(cloud.subnet), cloud.names.bridge)
        yield cloud, machines.NspawnProvider(
            path, cloud.workdir, cloud.names, cloud.bridge_ip, cloud.subnet.prefixlen,
            cloud.workdir / "console", int(cloud.subnet.network_address))
    assert not nat.table_exists(PREFIX_M)


def _leftovers(machine: machines.Machine) -> list[str]:
    left = []
    if machine.namespace in netns.list_namespaces():
        left.append(f"namespace {machine.namespace}")
    if (machines.CGROUP_ROOT / machine.namespace).exists():
        left.append("cgroup")
    if str(machine.node_dir) in Path("/proc/self/mounts").read_text():
        left.append("mount")
    if machine.pid is not None and netns.pid_alive(machine.pid):
        left.append(f"nspawn pid {machine.pid}")
    return left


def test_a_machine_boots_runs_its_user_data_and_prints_its_host_keys(
    cloud_and_provider: tuple[LocalCloud, machines.NspawnProvider],
    ssh_keypair: Keypair, tmp_path: Path,
) -> None:
    cloud, provider = cloud_and_provider
    ip = str(cloud.subnet.network_address + 4)
    spec = machines.MachineSpec("i-0boot1", "i-0boot1", ip, (ssh_keypair.public_key,),
                                USER_DATA, core=0)
    machine = provider.create(spec)
    try:
        t0 = time.monotonic()
        provider.boot(machine)
        _until(lambda: hostkeys.keys_in_console(provider.console_output(machine)),
               "host keys on the console", 120)
        keys = hostkeys.keys_in_console(provider.console_output(machine))
        known = tmp_path / "known_hosts"
        known.write_text("".join(f"{ip} {k}\n" for k in keys))
        _until(lambda: _ssh(ip, ssh_keypair.private_key, known, "true").returncode == 0,
               "ssh as admin", 60)
        print(f"boot to ssh: {time.monotonic() - t0:.1f}s")
        out = _ssh(ip, ssh_keypair.private_key, known,
                   "cloud-init status --wait >/dev/null; cat /var/tmp/user-data-ran; "
                   "hostname; sudo -n id -un; cat /proc/self/status | grep Cpus_allowed_list")
        assert out.returncode == 0, out.stderr
        assert "user data ran as root" in out.stdout
        assert machines.hostname_for(ip) in out.stdout
        assert "\nroot\n" in out.stdout
        assert out.stdout.rstrip().endswith("\t0")  # pinned to core 0
        # No root login with the key: the key pair is the default user's, as on Debian's AMIs.
        assert _ssh(ip, ssh_keypair.private_key, known, "true", user="root").returncode != 0
        # The registry is reachable through the cloud's NAT (the first boot's apt update).
        out = _ssh(ip, ssh_keypair.private_key, known,
                   "systemctl show -p Result --value sparkfab-first-boot-apt.service; "
                   "ls /var/lib/apt/lists | grep -c _Packages")
        assert out.stdout.split()[0] == "success", out.stdout
        # Powering off inside the machine ends it: the provider sees it off.
        _ssh(ip, ssh_keypair.private_key, known, "sudo -n systemctl poweroff")
        _until(lambda: provider.power_state(machine) == machines.OFF, "power off", 60)
    finally:
        stubborn = provider.destroy(machine)
    assert stubborn == []
    assert _leftovers(machine) == []


def test_a_running_machine_is_halted_by_sigterm_and_nothing_stays(
    cloud_and_provider: tuple[LocalCloud, machines.NspawnProvider], ssh_keypair: Keypair,
) -> None:
    cloud, provider = cloud_and_provider
    ip = str(cloud.subnet.network_address + 5)
    machine = provider.create(machines.MachineSpec(
        "i-0boot2", "i-0boot2", ip, (ssh_keypair.public_key,)))
    try:
        provider.boot(machine)
        _until(lambda: "SSH HOST KEY KEYS" in provider.console_output(machine),
               "the machine to come up", 120)
        assert provider.power_state(machine) == machines.RUNNING
        t0 = time.monotonic()
    finally:
        stubborn = provider.destroy(machine)
    halt_s = time.monotonic() - t0
    # A clean shutdown: systemd's own messages, not a killed process tree.
    assert stubborn == [] and machine.process is not None
    assert machine.process.returncode == 0
    assert _leftovers(machine) == [] and not machine.node_dir.exists()
    print(f"halt: {halt_s:.1f}s")


# The lists' lock for the first half (apt-get update retries), dpkg's for all of it
# (apt-get install waits through DPkg::Lock::Timeout).
HOLD_APT_LOCKS = """
import fcntl, sys, time
held = [open(p, "w") for p in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock",
                                "/var/lib/apt/lists/lock")]
for fh in held:
    fcntl.lockf(fh, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[1]) / 2)
held[2].close()
time.sleep(float(sys.argv[1]) / 2)
"""


def test_package_installs_wait_for_first_boot_and_apt_locks(
    cloud_and_provider: tuple[LocalCloud, machines.NspawnProvider],
    ssh_keypair: Keypair, tmp_path: Path,
) -> None:
    """What a fresh EC2 instance does to sparkfab's first step: cloud-init still running,
    another apt (apt-daily, package_update) holding dpkg's and the lists' locks."""
    from sparkfab.layout import LAYOUT
    from sparkfab.render import render

    cloud, provider = cloud_and_provider
    ip = str(cloud.subnet.network_address + 6)
    machine = provider.create(machines.MachineSpec(
        "i-0boot3", "i-0boot3", ip, (ssh_keypair.public_key,)))
    hold_s = 20
    try:
        provider.boot(machine)
        _until(lambda: hostkeys.keys_in_console(provider.console_output(machine)),
               "host keys on the console", 120)
        known = tmp_path / "known_hosts"
        known.write_text("".join(f"{ip} {k}\n" for k in
                                 hostkeys.keys_in_console(provider.console_output(machine))))
        _until(lambda: _ssh(ip, ssh_keypair.private_key, known, "true").returncode == 0,
               "ssh", 60)
        script = (render("_lib.sh", layout=LAYOUT.as_dict())
                  + "pkg_install jq\njq --version\n")
        holder = subprocess.Popen(
            ["ssh", "-i", str(ssh_keypair.private_key), "-F", "/dev/null",
             "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}",
             f"admin@{ip}", f"sudo -n python3 -c '{HOLD_APT_LOCKS}' {hold_s}"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            t0 = time.monotonic()
            out = subprocess.run(
                ["ssh", "-i", str(ssh_keypair.private_key), "-F", "/dev/null",
                 "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}",
                 f"admin@{ip}", "sudo -n bash -s"],
                input=script, capture_output=True, text=True, timeout=300)
            waited = time.monotonic() - t0
        finally:
            holder.wait(timeout=hold_s + 30)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().splitlines()[-1].startswith("jq-")
        assert "waiting for another apt" in out.stdout
        assert waited >= hold_s - 5  # it waited for the locks instead of failing
    finally:
        provider.destroy(machine)
    assert _leftovers(machine) == []
