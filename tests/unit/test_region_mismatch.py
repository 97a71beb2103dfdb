"""`fab teardown` / `fab status` when the settings name another region than the cluster's
(for_existing_cluster): the cluster in eu-west-3, the settings saying eu-west-1. A wrong
region must never end as "nothing found, exit 0" while the instances bill."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
import pytest
from invoke import Context
from invoke.exceptions import Exit

import tasks
from sparkfab import inventory
from sparkfab.errors import UserError
from sparkfab.provision import for_existing_cluster, provision

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(180)  # moto in-process: a hang is a bug

WRONG = "eu-west-1"


@pytest.fixture
def billing(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    """The cluster provisioned in the cloud's region; the task settings name WRONG."""
    provision(cloud.settings(), cloud.lines(), install=False)
    assert cloud.region != WRONG and len(cloud.live_instances()) == 3
    monkeypatch.setenv("SPARKFAB_CLUSTER", cloud.cluster)
    monkeypatch.setenv("SPARKFAB_REGION", WRONG)
    return cloud


def test_without_inventory_teardown_in_the_wrong_region_fails_and_deletes_nothing(
    billing: Cloud, capsys
) -> None:
    inventory.remove(billing.cluster)  # another machine, or a lost inventory
    before = billing.leftovers()
    with pytest.raises(Exit) as err:
        tasks.teardown(Context(), yes=True)
    assert err.value.code == 1
    lines = str(err.value.message).splitlines()
    assert lines[0] == (f"error: cluster {billing.cluster} has no instances in {WRONG}, but "
                        f"has instances elsewhere: 3 in {billing.region}")
    assert lines[1].startswith(f"hint: name the cluster's region: --region {billing.region}")
    # Not even its global parts (role, profile) were touched: the instances still use them.
    assert billing.leftovers() == before
    assert "nothing to delete" not in capsys.readouterr().out


def test_with_its_inventory_teardown_follows_the_recorded_region(billing: Cloud, capsys
                                                                 ) -> None:
    tasks.teardown(Context(), yes=True)
    out = capsys.readouterr().out
    assert f"cluster {billing.cluster} is in {billing.region} (from its inventory)" in out
    assert billing.leftovers() == {"instances": [], "security_groups": [], "key_pairs": [],
                                   "roles": [], "profiles": []}


def test_without_inventory_status_shows_the_region_the_cluster_is_in(billing: Cloud, capsys
                                                                    ) -> None:
    inventory.remove(billing.cluster)
    tasks.status(Context())
    out = capsys.readouterr().out
    assert (f"cluster {billing.cluster} has no instances in {WRONG} but 3 in "
            f"{billing.region} (no inventory here): showing those") in out
    assert f"cluster {billing.cluster} ({billing.region}): 3 running" in out


def test_a_cluster_found_nowhere_is_still_nothing_to_delete(cloud: Cloud, capsys,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("SPARKFAB_CLUSTER", "never-made")
    monkeypatch.setenv("SPARKFAB_REGION", WRONG)
    tasks.teardown(Context(), yes=True)
    assert f"cluster never-made: nothing to delete in {WRONG}" in capsys.readouterr().out


def test_the_same_cluster_name_in_two_other_regions_is_an_error_even_for_status(
    billing: Cloud
) -> None:
    inventory.remove(billing.cluster)
    other = "eu-central-1"
    ami = boto3.client("ec2", other).register_image(
        Name="ubuntu-24.04-test", RootDeviceName="/dev/sda1", Architecture="x86_64")["ImageId"]
    provision(billing.settings(region=other, workers=1, ami=ami), billing.lines(),
              install=False)
    inventory.remove(billing.cluster)
    with pytest.raises(UserError) as err:
        for_existing_cluster(billing.settings(region=WRONG), print, follow=True)
    assert err.value.message.endswith(f"instances elsewhere: 3 in {billing.region}, 2 in {other}")
