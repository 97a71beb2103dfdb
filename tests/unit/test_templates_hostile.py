"""render.py's promise, held for every shell template: each value reaches the shell only
through the `q` filter (shlex.quote), so no name, version, path or URL, however hostile,
becomes shell syntax. Each template is rendered with every text value replaced by one
holding quotes, `$()`, backquotes, `;`, spaces and a newline; then
- the value never appears raw (a quoted copy of it never holds `pwn'd` contiguously),
- the script still parses (`bash -n`) and passes shellcheck's warnings,
- the parts that can run here (the prelude, spark-env.sh) run without the canary file
  the value tries to create ever appearing, and see the value intact."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sparkfab import install
from sparkfab.inventory import ROLE_MASTER, ROLE_WORKER, Node
from sparkfab.layout import Layout
from sparkfab.render import render
from sparkfab.sizing import WorkerResources

CANARY = Path("/tmp/sparkfab-template-pwned")
MARK = "pwn'd"  # never contiguous in a shlex-quoted copy: its quote becomes '"'"'


def hostile(tag: str) -> str:
    return f"{tag} {MARK}$(touch {CANARY})`touch {CANARY}`;touch {CANARY} \"${{HOME}}\"\n#"


def hostile_layout(base: str = "/opt") -> Layout:
    fields = Layout.__dataclass_fields__
    return Layout(**{name: f"{base}/{hostile(name)}" for name in fields})


def _node(role: str) -> Node:
    return Node(role, hostile("id"), hostile("type"), hostile("ip"), hostile("public"),
                hostile("name"))


def _download() -> dict[str, str]:
    return {"url": hostile("url"), "algo": "sha512", "digest": hostile("digest"),
            "filename": hostile("file")}


def _ctx_common(layout: Layout) -> dict[str, Any]:
    return {"layout": layout.as_dict(), "step": hostile("step")}


def rendered_scripts(layout: Layout) -> dict[str, str]:
    """Every shell template, rendered with hostile values in every text slot."""
    out: dict[str, str] = {}
    ctx = _ctx_common(layout)
    out["install-java"] = render(
        "install-java.sh", **ctx, java_majors=[hostile("17"), hostile("21")],
        apt_java_packages=[hostile("apt-java-21"), hostile("apt-java-17")],
        dnf_java_package=hostile("dnf-java"),
        apt_lapack_package=hostile("apt-lapack"), dnf_lapack_package=hostile("dnf-lapack"))
    out["install-spark"] = render(
        "install-spark.sh", **ctx, spark_version=hostile("version"),
        spark_home=hostile("home"), spark=_download(), jars=[_download(), _download()])
    for env in ("venv", "conda"):
        out[f"install-python-{env}"] = render(
            "install-python.sh", **ctx, python_env=env, python_version=hostile("3.12"),
            installer=_download())
    for reqs in ([], [hostile("req")]):
        out[f"install-packages-{len(reqs)}"] = render(
            "install-packages.sh", **ctx, wheelhouse=_download(), requirements=reqs,
            pip_flags=[hostile("--flag")])
    ports = {"MASTER_RPC": 7077, "MASTER_UI": 8080, "WORKER_UI": 8081}
    for role, node in (("master", _node(ROLE_MASTER)), ("worker", _node(ROLE_WORKER))):
        cfg = {"layout": layout.as_dict(), "ports": ports, "cluster": hostile("cluster"),
               "node": node, "role": role, "master_ip": hostile("master-ip"),
               "worker": WorkerResources(4, 1000) if role == "worker" else None,
               "dummy_s3_credentials": True}
        for name in ("spark-env.sh", "spark-daemon.sh", "sparkfab-service.sh",
                     "sparkfab-supervise.sh"):
            out[f"{role}-{name}"] = render(name, **cfg)
        files = [install.ConfigFile(hostile("dest"), hostile("content"), hostile("mode"),
                                    hostile("owner"))]
        out[f"{role}-configure"] = render_configure(node, files, layout)
        out[f"{role}-user-data"] = render(
            "user-data.sh", cluster=hostile("cluster"), role=hostile(role),
            max_lifetime_s=8 * 3600, orphan_minutes=10,
            master_ip=hostile("master-ip") if role == "worker" else None)
    out["start-service"] = render("start-service.sh", layout=layout.as_dict(),
                                  name=hostile("service"))
    out["collect-logs"] = render(
        "collect-logs.sh", node_name=hostile("node"), archive=hostile("archive"),
        owner=hostile("owner"), units=[hostile("unit"), hostile("unit-2")], log_dir=hostile("logs"),
        work_dir=hostile("work"), guard_state=hostile("state"))
    return out


def render_configure(node: Node, files: list[install.ConfigFile], layout: Layout) -> str:
    # render_configure names the service from the node's role; the rest is hostile.
    return install.render_configure(node, files, layout)


def _code(text: str) -> str:
    """The script without the bodies of its quoted heredocs (data, never expanded)."""
    return re.sub(r"<<'([A-Za-z0-9_]+)'\n.*?\n\1\n", "<<'DATA'\n", text, flags=re.S)


@pytest.fixture(autouse=True)
def _no_canary() -> None:
    CANARY.unlink(missing_ok=True)
    yield
    assert not CANARY.exists(), "a template value ran as a command"


def test_no_template_value_reaches_the_shell_unquoted() -> None:
    scripts = rendered_scripts(hostile_layout())
    assert len(scripts) >= 18
    # configure.sh's heredocs hold file contents (data); user data's hold scripts (code).
    raw = {name: [line for line in (_code(text) if name.endswith("configure") else text)
                  .splitlines() if MARK in line]
           for name, text in scripts.items()}
    assert {name: lines for name, lines in raw.items() if lines} == {}


def test_hostile_renders_parse_and_pass_shellcheck(tmp_path: Path) -> None:
    paths = []
    for name, text in rendered_scripts(hostile_layout()).items():
        path = tmp_path / f"{name}.sh"
        path.write_text(text)
        parsed = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert parsed.returncode == 0, f"{name}: {parsed.stderr}"
        paths.append(str(path))
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck; .ci/run does it)")
    proc = subprocess.run(["shellcheck", "--shell=bash", "--severity=warning", *paths],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_hostile_values_run_as_data(tmp_path: Path) -> None:
    layout = hostile_layout(str(tmp_path))
    # The prelude every install step starts with: its directories are made, named as given.
    prelude = render("_lib.sh", layout=layout.as_dict()) + 'say "$STATE_DIR"\n'
    ran = subprocess.run(["bash", "-c", prelude], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == layout.state_dir + "\n"
    assert Path(layout.state_dir).is_dir() and Path(layout.downloads).is_dir()
    # spark-env.sh, sourced by every bin/spark-* command.
    env = rendered_scripts(layout)["worker-spark-env.sh"]
    probe = subprocess.run(["bash", "-c", env + 'printf "%s|%s" "$SPARK_LOCAL_IP" '
                            '"$SPARK_MASTER_HOST"'], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout == f"{hostile('ip')}|{hostile('master-ip')}"
