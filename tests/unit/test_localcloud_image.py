"""The local cloud's machine image: its cache key, its atomic build, the host packages."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sparkfab.localcloud import image


def test_the_cache_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    first = image.image_path(tmp_path)
    assert first.parent == tmp_path and first.name.startswith(f"debian-{image.SUITE}-")
    assert image.image_path(tmp_path) == first
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "vim"))
    assert image.image_path(tmp_path) != first


def test_the_image_holds_no_java_venv_or_spark() -> None:
    # The install steps put them there, as on EC2: an image that had them would hide
    # a broken java or python step.
    assert not [p for p in image.PACKAGES if "jdk" in p or "jre" in p or "venv" in p
                or "spark" in p]


def test_a_cached_image_is_reused_and_a_partial_one_never(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    builds: list[Path] = []

    def fake_debootstrap(target: Path) -> None:
        builds.append(target)
        for d in ("etc/ssh", "etc/cloud/cloud.cfg.d", "etc/systemd/system",
                  "var/lib/dbus", "var/cache/apt/archives"):
            (target / d).mkdir(parents=True)
        (target / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
        (target / "etc/machine-id").write_text("0123\n")
        (target / "var/cache/apt/archives/x.deb").write_text("deb")

    monkeypatch.setattr(image, "_debootstrap", fake_debootstrap)
    monkeypatch.setattr(image, "ensure_host_packages", lambda say: None)
    path = image.image_path(tmp_path)
    # What a killed build leaves: a temporary tree, and a final name without its marker.
    (tmp_path / f"{path.name}.tmp-99999").mkdir(parents=True)
    path.mkdir()
    built = image.ensure_image(tmp_path, say=print)
    assert built == path and image.is_built(path) and len(builds) == 1
    assert builds[0].name.startswith(f"{path.name}.tmp-")  # built aside, then renamed
    assert not list(tmp_path.glob("*.tmp-*"))
    assert not (path / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (path / "etc/machine-id").read_text() == ""
    assert not list((path / "var/cache/apt/archives").glob("*.deb"))
    assert "NoCloud" in (path / "etc/cloud/cloud.cfg.d/90-sparkfab-local-cloud.cfg").read_text()
    assert image.ensure_image(tmp_path, say=print) == path and len(builds) == 1


def test_a_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(target: Path) -> None:
        target.mkdir()
        raise image.ImageError("mmdebstrap failed (1): no network")

    monkeypatch.setattr(image, "_debootstrap", broken)
    monkeypatch.setattr(image, "ensure_host_packages", lambda say: None)
    with pytest.raises(image.ImageError, match="no network"):
        image.ensure_image(tmp_path, say=print)
    assert [p.name for p in tmp_path.iterdir()] == [f"{image.image_path(tmp_path).name}.lock"]


def test_systemd_container_is_pinned_to_the_hosts_systemd(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "_installed_version", lambda pkg: "252.38-1~deb12u1")
    assert image.install_command(["mmdebstrap", "systemd-container"]) == (
        "apt-get install -y mmdebstrap systemd-container=252.38-1~deb12u1")


def test_without_root_the_missing_packages_and_the_command_are_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "missing_host_packages", lambda: ["mmdebstrap", "nftables"])
    monkeypatch.setattr(image.os, "geteuid", lambda: 1000)
    with pytest.raises(image.ImageError) as err:
        image.ensure_host_packages(print)
    assert err.value.message.endswith("Debian packages mmdebstrap, nftables")
    assert err.value.hint == "run `apt-get install -y mmdebstrap nftables` as root"


def test_remove_tree_never_deletes_through_a_mount(tmp_path: Path) -> None:
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount (runs in the cluster/root CI)")
    tree = tmp_path / "build"
    (tree / "proc").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    script = (f"mount --bind {outside} {tree / 'proc'} && "
              f"python3 -c 'import sys; sys.path.insert(0, \"{Path.cwd()}\"); "
              f"from pathlib import Path; from sparkfab.localcloud import image; "
              f"image.remove_tree(Path(\"{tree}\"))'")
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                   check=True)
    assert (outside / "keep").read_text() == "host file" and not tree.exists()
