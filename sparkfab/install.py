"""Install and start Spark on an inventory's nodes over SSH: the second half of `fab provision`.

Every node runs the same pipeline, all nodes at once: facts -> java -> spark -> python ->
packages -> config. Each step is a script rendered from templates/ that skips what is
already at its version and prints a `sparkfab-changed:` line for what it did change, so a
second install changes nothing. Then the master's service starts (or restarts, if its
config changed), the workers' after it, and the install ends only when the master reports
every worker ALIVE with the cores and memory it was configured with.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparkfab import artifacts, ports
from sparkfab.artifacts import Download
from sparkfab.aws.session import aws_errors
from sparkfab.errors import UserError
from sparkfab.inventory import ROLE_MASTER, Inventory, Node, known_hosts_path
from sparkfab.java import SUPPORTED_MAJORS
from sparkfab.layout import LAYOUT, Layout
from sparkfab.remote import Remote, StepFailed, StepLog, StepResult, parallel
from sparkfab.render import render
from sparkfab.sizing import FACTS_COMMAND, NodeFacts, WorkerResources, worker_resources
from sparkfab.spark import (
    EVENT_LOG_PREFIX,
    ensure_event_log_dir,
    service_name,
    start_service,
    wait_for_master,
    wait_for_workers,
)

INSTALL_STEPS = ("java", "spark", "python", "packages")
STEP_TIMEOUT_S = {"java": 900, "spark": 900, "python": 900, "packages": 1800, "config": 120}
# Newest first: Debian 13 has 21 (and 25) but no 17; Ubuntu 24.04 has both; Debian 12 17.
APT_JAVA_PACKAGES = ("openjdk-21-jre-headless", "openjdk-17-jre-headless")
DNF_JAVA_PACKAGE = "java-17-amazon-corretto-headless"
# Native LAPACK for Spark ML: PCA's SVD of the 1280 x 1280 covariance takes ~1 s with
# OpenBLAS and ~7 s in netlib's pure-Java fallback (measured on the 2-core test machine).
APT_LAPACK_PACKAGE = "libopenblas0-pthread"
DNF_LAPACK_PACKAGE = "lapack"
# Wheels only: a node never builds a package from source.
PIP_FLAGS: tuple[str, ...] = ("--only-binary=:all:",)


@dataclass(frozen=True)
class InstallPlan:
    """What every node gets: versions and the downloads (presigned URLs or a mirror's)."""

    spark_version: str
    python_version: str
    python_env: str  # "venv" or "conda"
    downloads: Mapping[str, Download]
    requirements: tuple[str, ...] = ()  # empty: whatever the wheelhouse's requirements.txt says

    def download(self, name: str) -> Download:
        try:
            return self.downloads[name]
        except KeyError:
            raise UserError(
                f"no {name} artifact to install from",
                hint="stage the artifacts first (`fab stage`) or point artifact_source at a "
                "mirror",
            ) from None


@dataclass
class InstallReport:
    seconds: float
    log: StepLog
    workers: dict[str, WorkerResources] = field(default_factory=dict)  # by private IP

    def changed(self) -> dict[str, list[str]]:
        return self.log.changes()


# ---- rendering ---------------------------------------------------------------------------


def _dl(d: Download) -> dict[str, str]:
    if d.algo not in ("sha1", "sha256", "sha512"):
        raise UserError(f"{d.filename}: unsupported checksum {d.algo}")
    return {"url": d.url, "algo": d.algo, "digest": d.digest, "filename": d.filename}


def render_step(step: str, plan: InstallPlan, layout: Layout = LAYOUT) -> str:
    """The script for one install step (the same on every node)."""
    ctx: dict[str, Any] = {"layout": layout.as_dict(), "step": step}
    if step == "java":
        ctx.update(java_majors=list(SUPPORTED_MAJORS), apt_java_packages=list(APT_JAVA_PACKAGES),
                   dnf_java_package=DNF_JAVA_PACKAGE, apt_lapack_package=APT_LAPACK_PACKAGE,
                   dnf_lapack_package=DNF_LAPACK_PACKAGE)
    elif step == "spark":
        ctx.update(
            spark_version=plan.spark_version,
            spark_home=layout.spark_home_for(plan.spark_version),
            spark=_dl(plan.download(artifacts.SPARK)),
            jars=[_dl(plan.download(artifacts.HADOOP_AWS)),
                  _dl(plan.download(artifacts.SDK_BUNDLE))],
        )
    elif step == "python":
        if plan.python_env not in ("venv", "conda"):
            raise UserError(f"python_env must be venv or conda, not {plan.python_env!r}")
        installer = (_dl(plan.download(artifacts.MINIFORGE)) if plan.python_env == "conda"
                     else None)
        ctx.update(python_env=plan.python_env, python_version=plan.python_version,
                   installer=installer)
    elif step == "packages":
        ctx.update(wheelhouse=_dl(plan.download(artifacts.WHEELHOUSE)),
                   requirements=list(plan.requirements), pip_flags=list(PIP_FLAGS))
    else:
        raise ValueError(f"unknown install step {step!r}")
    return render(f"install-{step}.sh", **ctx)


@dataclass(frozen=True)
class ConfigFile:
    dest: str
    content: str
    mode: str = "0644"
    owner: str = "root:root"
    restarts: bool = True  # a running daemon reads it: a change needs a restart

    @property
    def dir(self) -> str:
        return self.dest.rsplit("/", 1)[0]


def config_files(
    inv: Inventory, node: Node, resources: WorkerResources | None
) -> list[ConfigFile]:
    """Every file `configure.sh` puts on `node`."""
    layout = LAYOUT.as_dict()
    role = "master" if node.role == ROLE_MASTER else "worker"
    ctx: dict[str, Any] = {
        "layout": layout,
        "ports": {k: getattr(ports, k) for k in ("MASTER_RPC", "MASTER_UI", "WORKER_UI")},
        "cluster": inv.cluster,
        "node": node,
        "role": role,
        "master_ip": inv.master.private_ip,
        "worker": resources,
        # Only the local cloud's namespace test hosts, which share this machine's kernel and
        # have no metadata service, sign with moto's dummy keys; every booted or EC2 node
        # takes its instance profile's credentials from IMDSv2 and holds no key at all.
        "dummy_s3_credentials": bool(inv.endpoint_url) and bool(inv.extra.get("shared_kernel")),
    }
    if not inv.spark_secret:
        raise UserError(f"inventory of {inv.cluster} has no spark_secret",
                        hint="re-run `fab provision` (it generates one)")
    defaults = render(
        "spark-defaults.conf",
        **ctx,
        spark_secret=inv.spark_secret,
        bucket=inv.bucket,
        event_log_prefix=EVENT_LOG_PREFIX,
        region=inv.region,
        endpoint_url=inv.endpoint_url or "",
    )
    user = LAYOUT.service_user
    name = service_name(node)
    return [
        ConfigFile(f"{LAYOUT.spark_conf}/spark-env.sh", render("spark-env.sh", **ctx)),
        # Holds the RPC secret: readable by the service user only.
        ConfigFile(f"{LAYOUT.spark_conf}/spark-defaults.conf", defaults, "0600",
                   f"{user}:{user}"),
        ConfigFile(f"{LAYOUT.bin_dir}/{name}", render("spark-daemon.sh", **ctx), "0755"),
        ConfigFile(f"{LAYOUT.systemd_dir}/{name}.service", render(f"{name}.service", **ctx)),
        ConfigFile(f"{LAYOUT.bin_dir}/sparkfab-supervise",
                   render("sparkfab-supervise.sh", **ctx), "0755", restarts=False),
        ConfigFile(f"{LAYOUT.bin_dir}/sparkfab-service",
                   render("sparkfab-service.sh", **ctx), "0755", restarts=False),
    ]


def render_configure(node: Node, files: list[ConfigFile], layout: Layout = LAYOUT) -> str:
    delimiter = "SPARKFAB_EOF_" + secrets.token_hex(8)
    for f in files:
        if delimiter in f.content:  # pragma: no cover - 64 random bits
            raise RuntimeError("heredoc delimiter collision")
    return render(
        "configure.sh",
        layout=layout.as_dict(),
        step="config",
        node=node,
        service=service_name(node),
        files=[{"dest": f.dest, "dir": f.dir, "content": f.content if f.content.endswith("\n")
                else f.content + "\n", "mode": f.mode, "owner": f.owner,
                "restarts": f.restarts} for f in files],
        delimiter=delimiter,
        systemd_units=True,
    )


# ---- running ----------------------------------------------------------------------------


def plan_from(settings: Any, downloads: Mapping[str, Download],
              facts: Mapping[str, Any] | None = None) -> InstallPlan:
    """The plan for these downloads; `facts` are the mirror's (spark_version, python_version:
    what the wheelhouse was built for)."""
    facts = facts or {}
    return InstallPlan(
        spark_version=str(facts.get("spark_version") or artifacts.spark_version()),
        python_version=str(facts.get("python_version") or "{}.{}".format(*sys.version_info[:2])),
        python_env=getattr(settings, "python_env", "venv"),
        downloads=downloads,
    )


def _expected_public_key(settings: Any) -> str | None:
    path = getattr(settings, "public_key_file", None)
    if path is None and getattr(settings, "public_key_path", None):
        path = Path(settings.public_key_path).expanduser()
    try:
        return Path(path).read_text() if path else None
    except OSError:
        return None


def install_cluster(
    inv: Inventory,
    settings: Any,
    *,
    plan: InstallPlan,
    inventory_dir: Path | None = None,
    remote: Remote | None = None,
    s3: Any = None,
    out: Callable[[str], None] = print,
    health_timeout_s: float = 180.0,
) -> InstallReport:
    """Install everything on every node, start Spark, wait until every worker is ALIVE.

    Raises StepFailed naming each failing host, its step and its last output lines.
    """
    start = time.monotonic()
    own_remote = remote is None
    remote = remote or Remote(
        inv,
        known_hosts=known_hosts_path(inv.cluster, inventory_dir),
        expected_public_key=_expected_public_key(settings),
        out=out,
    )
    log = StepLog()
    scripts = {step: render_step(step, plan) for step in INSTALL_STEPS}
    resources: dict[str, WorkerResources] = {}
    try:
        out(f"installing Spark {plan.spark_version} on {len(inv.nodes)} nodes of "
            f"{inv.cluster} (python {plan.python_version}, {plan.python_env})")

        def pipeline(node: Node) -> None:
            r = log.add(remote.run(node, FACTS_COMMAND, step="facts", sudo=False, echo=False))
            if not r.ok:
                return
            facts = NodeFacts.parse(r.stdout)
            res = None if node.role == ROLE_MASTER else worker_resources(facts, settings)
            if res is not None:
                resources[node.private_ip] = res
            for step in INSTALL_STEPS:
                r = log.add(remote.run_script(node, step, scripts[step],
                                              timeout=STEP_TIMEOUT_S[step]))
                if not r.ok:
                    return
            script = render_configure(node, config_files(inv, node, res))
            log.add(remote.run_script(node, "config", script, timeout=STEP_TIMEOUT_S["config"]))

        parallel(inv.nodes, pipeline)
        _stop_on_failure(log, out)

        if inv.bucket:
            with aws_errors(inv.region, f"creating Spark's event log folder in {inv.bucket}"):
                ensure_event_log_dir(inv, s3)
        log.add(start_service(remote, inv.master))
        _stop_on_failure(log, out)
        wait_for_master(remote, inv)
        parallel(inv.workers, lambda n: log.add(start_service(remote, n)))
        _stop_on_failure(log, out)
        t0 = time.monotonic()
        wait_for_workers(remote, inv, resources, timeout_s=health_timeout_s)
        log.add(StepResult(inv.master.name, "health", True, time.monotonic() - t0))
        out(log.summary())
        report = InstallReport(time.monotonic() - start, log, resources)
        out(f"Spark is up: {len(inv.workers)} workers ALIVE; install took {report.seconds:.1f}s")
        return report
    finally:
        if own_remote:
            remote.close()


def _stop_on_failure(log: StepLog, out: Callable[[str], None]) -> None:
    failures = log.failures()
    if failures:
        out(log.summary())
        raise StepFailed(failures)
