"""Names, addresses and preconditions of the local cloud (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkfab.errors import UserError
from sparkfab.localcloud import LocalCloud, derived_subnet, missing_requirements
from sparkfab.localcloud import hosts as hosts_mod
from sparkfab.localcloud.netns import Names, bridge_address


def test_names_are_derived_from_the_prefix_and_fit_linux_limits() -> None:
    names = Names("sfc1")
    assert names.bridge == "sfc1-br"
    assert names.namespace("worker-2") == "sfc1-worker-2"
    assert names.veth_outer(254) == "sfc1-v254"
    assert len(Names("abcdefgh").veth_inner_tmp(254)) <= 15


@pytest.mark.parametrize("prefix", ["", "SF", "sf-1", "toolongprefix"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Names(prefix)


def test_bridge_takes_the_first_address_and_side_clouds_do_not_overlap() -> None:
    assert str(bridge_address("10.77.1.0/24")) == "10.77.1.1/24"
    assert derived_subnet("10.77.1.0/24", 0) == "10.77.1.0/24"
    assert derived_subnet("10.77.1.0/24", 1) == "10.77.101.0/24"
    assert derived_subnet("10.77.2.0/24", 2) == "10.77.202.0/24"


@pytest.mark.parametrize("mount", ["/tmp", "/opt/x", "/root/cloud"])
def test_sshd_hosts_refuse_a_workdir_they_mount_over(mount: str) -> None:
    # The booted machines have root filesystems of their own: a cloud may live there
    # (a clone under /tmp or a home directory); only the sshd hosts mount over it.
    cloud = LocalCloud("sft", "10.77.9.0/24", workdir=Path(mount))
    with pytest.raises(UserError, match="mounts over"):
        cloud.add_host("master", None, [])


def test_without_root_the_reason_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts_mod.os, "geteuid", lambda: 1000)
    assert "needs root (network namespaces, bridges, mounts)" in missing_requirements()
    with pytest.raises(UserError, match="cannot start: needs root"):
        LocalCloud("sft", "10.77.9.0/24", workdir=Path("/work/nowhere")).up()
