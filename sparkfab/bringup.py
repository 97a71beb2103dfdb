"""From running instances to a running Spark cluster: the second half of `fab provision`.

host keys (sparkfab.hostkeys) -> the artifacts the nodes download (staged in the cluster's
bucket, staged there first from their origins when the bucket has none, or a mirror URL)
-> the SSH install (sparkfab.install) -> the idle guard on the master (sparkfab.idleguard).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sparkfab import artifact_pins, artifacts, hostkeys, idleguard, install, inventory, staging
from sparkfab.artifacts import Download, Mirror
from sparkfab.aws.session import AwsSession, aws_errors
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory
from sparkfab.remote import Remote

Say = Callable[[str], None]


def _from_bucket(s3: Any, bucket: str, settings: Any, say: Say,
                 directory: Path | None = None) -> Mirror:
    mirror = staging.staged_mirror(s3, bucket)
    if mirror is None:
        say(f"bucket {bucket} holds no staged artifacts yet: fetching them from their "
            "origins and staging them (once per bucket; `fab stage` does this ahead)")
        source = staging.from_origins(python_env=settings.python_env,
                                      python_version=settings.node_python, say=say)
        staging.stage_cluster(s3, bucket, source, say, directory)
        mirror = staging.staged_mirror(s3, bucket)
        if mirror is None:  # pragma: no cover - stage_cluster writes it
            raise UserError(f"staging into {bucket} left no manifest")
    # The nodes trust the digests of the manifest: only if this machine pinned the same.
    artifact_pins.check(bucket, mirror, say, directory)
    return mirror


def _from_url(base_url: str) -> Mirror:
    url = f"{base_url.rstrip('/')}/{artifacts.MANIFEST}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (the user's mirror)
            doc = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the mirror's manifest {url}: {exc}",
                        hint="artifact_source must be the base URL of a mirror directory "
                        "(one with manifest.json), or 'bucket'") from None
    return Mirror.from_doc(Path(base_url), doc, url)


def downloads_for(inv: Inventory, settings: Any, aws: AwsSession, say: Say,
                  directory: Path | None = None,
                  ) -> tuple[dict[str, Download], Mapping[str, Any]]:
    """What each node downloads (URL + sha512 per artifact) and the mirror's facts."""
    if settings.artifact_source != "bucket":
        mirror = _from_url(settings.artifact_source)
        return artifacts.mirror_downloads(settings.artifact_source, mirror), mirror.facts
    s3 = aws.client("s3")
    with aws_errors(aws.region, f"reading the artifacts staged in {inv.bucket}"):
        mirror = _from_bucket(s3, inv.bucket, settings, say, directory)
        return artifacts.presigned_downloads(s3, inv.bucket, mirror), mirror.facts


def bring_up(inv: Inventory, settings: Any, say: Say,
             directory: Path | None = None) -> install.InstallReport:
    """Record host keys, install and start Spark on every node, arm the idle guard."""
    aws = AwsSession(settings)
    with aws_errors(aws.region, "reading the instances' host keys"):
        hostkeys.record(inv, settings, aws.client("ec2"), say, directory)
    downloads, facts = downloads_for(inv, settings, aws, say, directory)
    plan = install.plan_from(settings, downloads, facts={
        "spark_version": facts.get("spark"), "python_version": facts.get("python")})
    report = install.install_cluster(inv, settings, plan=plan, inventory_dir=directory,
                                     s3=aws.client("s3"), out=say)
    with Remote(inv, known_hosts=inventory.known_hosts_path(inv.cluster, directory),
                out=say) as remote:
        idleguard.install_for(remote, inv, settings, out=say)
    return report
