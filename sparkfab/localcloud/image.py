"""The local cloud's machine image: a Debian 13 root filesystem built from the Debian registry.

Each node boots its own copy of it (an overlay per node, see machines.py), so what sparkfab
does to an operating system (apt, systemd units, user data, power-off) runs for real. The
image is what Debian's cloud AMI starts as, no more: no Java, no python3-venv, no Spark (the
install steps put them there, as on EC2).

    path = ensure_image(say=print)   # built once per machine (~1 min), then reused

Built with `mmdebstrap` into a temporary directory next to the cache and renamed into place,
so a half-built image is never used; the cache key is a hash of the recipe below, so a
changed recipe builds a new image and an unchanged one is reused across runs and clones.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sparkfab.config import DEBIAN_PYTHON, DEBIAN_SSH_USER
from sparkfab.errors import UserError

# The distribution users get by default on AWS (config.DEBIAN_AMI_PARAMETER): Debian 13.
SUITE = "trixie"
VARIANT = "minbase"
# What Debian's cloud image has that sparkfab relies on, on top of minbase.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "cloud-init", "ca-certificates",
    "curl", "python3", "sudo", "iproute2", "locales", "procps", "zstd",
)
CACHE_ROOT = Path(os.environ.get("SPARKFAB_IMAGE_CACHE", "/var/cache/sparkfab/images"))
BUILD_TIMEOUT_S = 900
# Debian 13's python3 (the wheelhouse is built for it) and Debian's default cloud user
# (the key pair's public key goes to it): the same facts as sparkfab's AWS defaults.
NODE_PYTHON = DEBIAN_PYTHON
DEFAULT_USER = DEBIAN_SSH_USER
MARKER = ".sparkfab-image.json"

# cloud-init as on an EC2 Debian AMI, less what the host does for the node: the network
# is configured by the harness (the node's namespace), and minbase has only C.UTF-8.
CLOUD_CFG = f"""\
# sparkfab local cloud: the NoCloud seed stands in for EC2's metadata service.
datasource_list: [NoCloud, None]
network: {{config: disabled}}
locale: C.UTF-8
manage_etc_hosts: localhost
ssh_deletekeys: true
ssh_genkeytypes: [ed25519, ecdsa]
system_info:
  default_user:
    name: {DEFAULT_USER}
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
"""

# A fresh EC2 instance refreshes its package lists on first boot (apt-daily, cloud-init's
# package_update): sparkfab's first install step meets the apt/dpkg locks held. The image
# does the same on every node's first boot, so the install's waiting is tested here.
FIRST_BOOT_UNIT = """\
[Unit]
Description=sparkfab local cloud: refresh apt lists on first boot, as EC2 images do
After=network.target
ConditionPathExists=!/var/lib/sparkfab-first-boot-done

[Service]
Type=oneshot
ExecStart=/usr/bin/apt-get update -q
ExecStart=/usr/bin/touch /var/lib/sparkfab-first-boot-done

[Install]
WantedBy=multi-user.target
"""

Say = Callable[[str], None]


class ImageError(UserError):
    """The image could not be built; the message says why, the hint what to do."""


def recipe() -> dict[str, object]:
    """Everything the image is made from: its hash names the cache entry."""
    return {"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES),
            "cloud_cfg": CLOUD_CFG, "first_boot_unit": FIRST_BOOT_UNIT,
            "default_user": DEFAULT_USER, "format": 1}


def recipe_hash() -> str:
    blob = json.dumps(recipe(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_path(cache_root: Path | None = None) -> Path:
    return (cache_root or CACHE_ROOT) / f"debian-{SUITE}-{recipe_hash()}"


def missing_host_packages() -> list[str]:
    """Debian packages this machine lacks to build and boot images (empty when none)."""
    need = []
    if shutil.which("mmdebstrap") is None:
        need.append("mmdebstrap")
    if shutil.which("systemd-nspawn") is None:
        need.append("systemd-container")
    if shutil.which("nft") is None:
        need.append("nftables")
    return need


def install_command(packages: list[str]) -> str:
    """The apt command for `packages`; systemd-container pinned to the host's systemd, or
    apt upgrades the host's systemd with it."""
    args = []
    for pkg in packages:
        if pkg == "systemd-container":
            version = _installed_version("systemd")
            args.append(f"systemd-container={version}" if version else pkg)
        else:
            args.append(pkg)
    return "apt-get install -y " + " ".join(args)


def _installed_version(package: str) -> str | None:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def ensure_host_packages(say: Say = print) -> None:
    """Install the Debian packages the machines need (root, apt), or say which and how."""
    need = missing_host_packages()
    if not need:
        return
    command = install_command(need)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImageError(f"the local cloud's machines need Debian packages {', '.join(need)}",
                         hint=f"run `{command}` as root")
    say(f"installing {', '.join(need)}: {command}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], [*command.split(), "-qq"]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise ImageError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()[-400:]}",
                             hint=f"install them by hand: `{command}`")


def is_built(path: Path) -> bool:
    return (path / MARKER).is_file()


def ensure_image(cache_root: Path | None = None, say: Say = print) -> Path:
    """The image for the current recipe: reused when cached, built (atomically) when not.

    Two builders at once (two test runs) serialize on a lock file: the second reuses the
    first's image.
    """
    path = image_path(cache_root)
    if is_built(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(path):
            return path
        ensure_host_packages(say)
        _sweep_partial(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        say(f"building the local cloud's Debian {SUITE} image in {path} (about a minute)")
        t0 = time.monotonic()
        try:
            _debootstrap(tmp)
            _prepare(tmp)
            (tmp / MARKER).write_text(json.dumps(
                {**recipe(), "built_s": round(time.monotonic() - t0, 1)}, indent=2) + "\n")
            os.rename(tmp, path)
        except BaseException:
            remove_tree(tmp)
            raise
        say(f"image built in {time.monotonic() - t0:.0f}s: {path}")
    return path


def _sweep_partial(path: Path) -> None:
    """Remove builds of this recipe that a killed builder left (we hold the lock)."""
    for old in path.parent.glob(f"{path.name}.tmp-*"):
        remove_tree(old)
    if path.exists() and not is_built(path):
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """rm -rf that never crosses into a mount: a killed mmdebstrap can leave /proc, /sys or
    /dev mounted inside its target, and deleting through those would hit the host's."""
    mounts = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point == str(path) or point.startswith(f"{path}/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    if any(line.split()[1].startswith(f"{path}/") for line in _mount_lines()):
        raise ImageError(f"cannot unmount what is mounted under {path}; remove it by hand")
    shutil.rmtree(path, ignore_errors=True)


def _mount_lines() -> list[str]:
    try:
        return Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []


def _debootstrap(target: Path) -> None:
    # No fsync per file while unpacking (a crash only loses a temporary tree): dpkg's
    # syncs are most of a build's time on a busy disk.
    argv = ["mmdebstrap", "--quiet", f"--variant={VARIANT}", "--dpkgopt=force-unsafe-io",
            f"--include={','.join(PACKAGES)}", SUITE, str(target)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                              check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"mmdebstrap did not finish in {BUILD_TIMEOUT_S}s",
                         hint="is the Debian registry (deb.debian.org) reachable?") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise ImageError(f"mmdebstrap failed ({proc.returncode}): {tail}",
                         hint="is the Debian registry (deb.debian.org) reachable?")


def _prepare(root: Path) -> None:
    """Make the tree a cloud image: no identity of its own, cloud-init configured."""
    # Each node makes its own host keys and machine id on first boot, as an AMI's instances do.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()
    (root / "etc/cloud/cloud.cfg.d/90-sparkfab-local-cloud.cfg").write_text(CLOUD_CFG)
    unit = root / "etc/systemd/system/sparkfab-first-boot-apt.service"
    unit.write_text(FIRST_BOOT_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    # Nothing in a container needs these, and they fail there (no udev, no hardware clock).
    for unit_name in ("systemd-timesyncd.service", "getty@tty1.service"):
        mask = root / "etc/systemd/system" / unit_name
        with contextlib.suppress(FileExistsError):
            mask.symlink_to("/dev/null")
    # The build's own dpkg/apt options (unsafe io) must not stay in the image.
    for conf in ("etc/dpkg/dpkg.cfg.d/99mmdebstrap", "etc/apt/apt.conf.d/99mmdebstrap"):
        with contextlib.suppress(FileNotFoundError):
            (root / conf).unlink()
    # The package cache mmdebstrap filled: an AMI ships without it.
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
