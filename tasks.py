"""sparkfab's `fab` tasks: `fab --list` shows them, `fab TASK --help` documents each.

Thin on purpose: parse flags, call into the `sparkfab` package, print results. Errors a
user can fix are raised as `sparkfab.errors.UserError` and printed as one line + a hint.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fabric import task
from invoke.exceptions import Exit

from sparkfab.aws.session import AwsSession, aws_errors
from sparkfab.aws.status import cluster_status, format_status
from sparkfab.config import Settings, load_settings
from sparkfab.errors import UserError
from sparkfab.inventory import remove as remove_inventory
from sparkfab.provision import Reporter, for_existing_cluster, teardown_plan
from sparkfab.provision import provision as provision_cluster
from sparkfab.provision import teardown as teardown_cluster

# ---- job: run-job (local mode) ---------------------------------------------------------

# ---- AWS: provision / status / teardown ------------------------------------------------

_SETTING_HELP = {
    "cluster": "cluster name (default: from sparkfab.yaml, else 'sparkfab')",
    "region": "AWS region, EU only (eu-west-1, eu-central-1, ...)",
    "config": "settings file to read instead of ./sparkfab.yaml",
}


def _aws_settings(config: str | None = None, **flags: object) -> Settings:
    return load_settings(flags, path=config)


@contextmanager
def _user_errors() -> Iterator[None]:
    """A UserError ends the task with `error: ...` + `hint: ...`, never a traceback."""
    try:
        yield
    except UserError as exc:
        raise Exit(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""),
                   code=1) from None


@task(help={
    **_SETTING_HELP,
    "workers": "number of worker instances",
    "master_instance_type": "master's instance type (e.g. m6i.large)",
    "worker_instance_type": "each worker's instance type (e.g. m6i.xlarge)",
    "spot": "workers as one-time spot instances (the master stays on-demand)",
    "on_demand": "workers on-demand (overrides spot: true in the settings)",
    "root_volume_gb": "root volume size per node, GiB (encrypted gp3)",
    "ami": "AMI id (default: current Ubuntu 24.04 LTS via AWS's public SSM parameter)",
    "operator_cidr": "network allowed to SSH in (default: your public IP/32)",
    "ssh_address": "address SSH uses: public (default) or private (VPN/bastion)",
    "bucket": "S3 bucket to use or create (default: sparkfab-<cluster>-<account>-<region>)",
    "max_lifetime_hours": "nodes terminate themselves this many hours after boot",
    "install": "run the SSH install afterwards; --no-install stops once the instances run "
    "and the inventory is written",
}, auto_shortflags=False)
def provision(c, cluster=None, region=None, workers=None, master_instance_type=None,
              worker_instance_type=None, spot=False, on_demand=False, root_volume_gb=None,
              ami=None, operator_cidr=None, ssh_address=None, bucket=None,
              max_lifetime_hours=None, install=True, config=None):
    """Create (or complete) the cluster on AWS, write inventory/<cluster>.json, install Spark."""
    with _user_errors():
        if spot and on_demand:
            raise UserError("--spot and --on-demand contradict each other", "give one")
        settings = _aws_settings(
            config, cluster=cluster, region=region, workers=workers,
            master_instance_type=master_instance_type,
            worker_instance_type=worker_instance_type,
            spot=True if spot else (False if on_demand else None),
            root_volume_gb=root_volume_gb, ami=ami, operator_cidr=operator_cidr,
            ssh_address=ssh_address, bucket=bucket, max_lifetime_hours=max_lifetime_hours)
        say = Reporter(settings.cluster)
        provision_cluster(settings, say, install=install)


@task(help=_SETTING_HELP, auto_shortflags=False)
def status(c, cluster=None, region=None, config=None):
    """Show the cluster's instances (role, id, type, state, IPs, uptime) and estimated cost."""
    with _user_errors():
        settings = _aws_settings(config, cluster=cluster, region=region)
        settings = for_existing_cluster(settings, print)
        aws = AwsSession(settings)
        with aws_errors(aws.region, "reading the cluster's instances"):
            print(format_status(cluster_status(aws)))


@task(help={
    **_SETTING_HELP,
    "yes": "do not ask for confirmation",
    "delete_bucket": "also delete the bucket and all its data (only one sparkfab created)",
}, auto_shortflags=False)
def teardown(c, cluster=None, region=None, yes=False, delete_bucket=False, config=None):
    """Delete everything tagged with the cluster's name; keep the bucket unless asked."""
    with _user_errors():
        settings = _aws_settings(config, cluster=cluster, region=region)
        say = Reporter(settings.cluster)
        settings = for_existing_cluster(settings, say)
        aws, plan = teardown_plan(settings, delete_bucket)
        if plan.empty:
            if plan.kept_bucket:
                say(f"bucket {plan.kept_bucket}: {plan.kept_reason}")
            say(f"cluster {settings.cluster}: nothing to delete in {aws.region}")
            remove_inventory(settings.cluster)
            return
        print(f"teardown of cluster {settings.cluster} in {aws.region} will delete:")
        print("\n".join(plan.lines()))
        if plan.kept_bucket:
            print(f"  (bucket {plan.kept_bucket}: {plan.kept_reason})")
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("teardown needs confirmation and there is no terminal",
                                "add --yes to delete without asking")
            if input("delete all of the above? [y/N] ").strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return
        teardown_cluster(aws, plan, say)


# ---- cluster install: stage ------------------------------------------------------------

# ---- on the cluster: upload-data / ui / logs / ssh -------------------------------------

# ---- local cloud: local-cloud-up / local-cloud-down ------------------------------------

_LOCAL_CLOUD_HELP = {
    "prefix": "name of the local cloud: its namespaces, bridge and .cache/localcloud/<prefix> "
    "(default sf)",
    "subnet": "the cloud's network, a /24 (default 10.77.0.0/24); its first address is the "
    "bridge and moto_server",
}


@task(help={
    **_LOCAL_CLOUD_HELP,
    "mirror": "artifact mirror to stage into the bucket (default .cache/mirror, built on "
    "first use from PyPI and Maven Central: minutes)",
}, auto_shortflags=False)
def local_cloud_up(c, prefix=None, subnet=None, mirror=None):
    """Start a local stand-in for AWS (moto + sshd hosts in namespaces); needs root."""
    from sparkfab.localcloud import target

    with _user_errors():
        path = target.up(prefix or target.DEFAULT_PREFIX, subnet or target.DEFAULT_SUBNET,
                         mirror_dir=mirror)
        print(f"local cloud ready; its settings: {path}")
        print("point sparkfab at it (no AWS account or keys needed), then provision:")
        print(f"  export {target.CONFIG_EXPORT.format(path=path)}")
        print("  fab provision --workers 2")


@task(help={"prefix": _LOCAL_CLOUD_HELP["prefix"]}, auto_shortflags=False)
def local_cloud_down(c, prefix=None):
    """Stop the local cloud: every host, moto_server and all it held; `fab teardown` first."""
    from sparkfab.localcloud import target

    with _user_errors():
        name = prefix or target.DEFAULT_PREFIX
        if target.down(name):
            print(f"local cloud {name}: stopped and removed")
        else:
            print(f"local cloud {name}: not running")
