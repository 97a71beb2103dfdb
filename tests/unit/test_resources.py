"""A local-cloud machine's size from its instance type (sparkfab/localcloud/resources.py),
and that sparkfab's worker sizing reads it back off the node as it reads an EC2 node."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from sparkfab import sizing
from sparkfab.localcloud import resources


@pytest.fixture
def ec2() -> Iterator[object]:
    with mock_aws():
        yield boto3.client("ec2", region_name="eu-west-3")


def test_a_quarter_of_the_type_within_one_core_and_this_machine() -> None:
    assert resources.scaled(4, 16384, 2, 24000) == resources.Resources(1, 4096)
    assert resources.scaled(2, 8192, 2, 24000) == resources.Resources(1, 2048)
    assert resources.scaled(16, 65536, 2, 24000) == resources.Resources(2, 16384)
    # Never under one core and MIN_MEMORY_MB, never over what this machine has.
    assert resources.scaled(1, 512, 2, 24000) == resources.Resources(1, resources.MIN_MEMORY_MB)
    assert resources.scaled(192, 786432, 2, 24000) == resources.Resources(2, 24000)


def test_the_types_come_from_moto(ec2: object) -> None:
    xlarge = resources.of_type(ec2, "m6i.xlarge", 2)
    assert xlarge is not None and (xlarge.cores, xlarge.memory_mb) == (1, 4096)
    assert resources.of_type(ec2, "no-such.type", 2) is None


def test_the_worker_sizing_reads_the_reported_memory_back(tmp_path: object) -> None:
    """The node's facts command, run on the meminfo a machine gets: what Spark is offered."""
    path = f"{tmp_path}/meminfo"
    with open(path, "w") as fh:
        fh.write(resources.meminfo(4096))
    command = sizing.FACTS_COMMAND.replace("/proc/meminfo", path)
    facts = sizing.NodeFacts.parse(subprocess.run(["sh", "-c", command], capture_output=True,
                                                  text=True, check=True).stdout)
    assert facts.memory_mb == 4096
    assert sizing.worker_resources(facts).memory_mb == 4096 - sizing.OS_RESERVE_MIN_MB


def test_cores_are_picked_round_robin_from_the_machines_first() -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        assert resources.cpu_list(cores[0], 2) is None
        return
    assert resources.cpu_list(cores[0], 1) == str(cores[0])
    two = resources.cpu_list(cores[-1], 2)
    assert two is not None and set(two.split(",")) == {str(cores[-1]), str(cores[0])}
    assert resources.cpu_list(None, 1) is None
