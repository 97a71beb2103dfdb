"""The idle cost guard: a check every minute on the master that shuts the cluster down when
no Spark application has run for `idle_timeout_minutes` (or at the max lifetime).

The check itself is templates/idle-guard.py.j2, rendered here with the cluster's facts and
run on the master by the node's Python, as root (it may shut the machine down): under a
systemd timer on real instances, or as a loop under `sparkfab-service` (its supervisor)
where systemd is absent (the local cloud). It writes STATE_FILE, which `fab status` reads
over SSH (`read_state` + `describe`).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from sparkfab import spark
from sparkfab.errors import UserError
from sparkfab.inventory import Inventory
from sparkfab.layout import LAYOUT
from sparkfab.remote import HOME_DIR, PRIVATE_DIR_COMMAND

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# The service name: sparkfab-service runs bin_dir/NAME (systemd: NAME.service + NAME.timer).
UNIT = "sparkfab-idle-guard"
SCRIPT_PATH = f"{LAYOUT.bin_dir}/{UNIT}"
STATE_FILE = f"{LAYOUT.state_dir}/idle-guard.json"
INTERVAL_S = 60
# On AWS the instances are launched with shutdown behaviour `terminate`.
AWS_SHUTDOWN = ("shutdown", "-h", "now")
# The local cloud's sshd hosts (hosts.py, used by the install tests) share this machine's
# kernel: a real shutdown would power off the host. There the guard stops the master
# daemon instead, which a test sees. Its booted machines (machines.py) shut down for real.
LOCAL_CLOUD_SHUTDOWN = (f"{LAYOUT.bin_dir}/sparkfab-service", "stop", "spark-master")
_STAGING = re.compile(re.escape(HOME_DIR) + r"/idle-guard\.[A-Za-z0-9]{8}")
# Interactive logins (utmp): an operator's `fab ssh` shell keeps the cluster up.
SESSIONS = ("who",)


@dataclass(frozen=True)
class GuardConfig:
    cluster: str
    master_json_url: str
    idle_timeout_minutes: float
    hard_deadline: int = 0  # epoch seconds; 0: no max lifetime
    shutdown_command: tuple[str, ...] = AWS_SHUTDOWN
    interval_s: int = INTERVAL_S
    state_file: str = STATE_FILE
    sessions_command: tuple[str, ...] = SESSIONS
    python: str = LAYOUT.python  # the node's Python (the job's environment)


def shutdown_command_for(inv: Inventory) -> tuple[str, ...]:
    return LOCAL_CLOUD_SHUTDOWN if inv.extra.get("shared_kernel") else AWS_SHUTDOWN


def config_for(
    inv: Inventory,
    idle_timeout_minutes: float,
    max_lifetime_hours: float = 0,
    shutdown_command: tuple[str, ...] | None = None,
) -> GuardConfig:
    """The guard for a cluster: it watches the master on its private IP (never public)."""
    if idle_timeout_minutes <= 0:
        raise UserError(
            f"idle timeout must be > 0 minutes to install the idle guard, got "
            f"{idle_timeout_minutes}",
            "set idle_timeout_minutes in sparkfab.yaml (0 means: no guard is installed)",
        )
    master = inv.master
    hard = 0
    if max_lifetime_hours > 0 and master.launched_at:
        launched = datetime.fromisoformat(master.launched_at.replace("Z", "+00:00"))
        hard = int(launched.timestamp() + max_lifetime_hours * 3600)
    return GuardConfig(
        cluster=inv.cluster,
        master_json_url=spark.master_json_url(inv),
        idle_timeout_minutes=idle_timeout_minutes,
        hard_deadline=hard,
        shutdown_command=tuple(shutdown_command or shutdown_command_for(inv)),
    )


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # scripts and unit files, not HTML
    )


def render_script(cfg: GuardConfig) -> str:
    return _env().get_template("idle-guard.py.j2").render(
        python=cfg.python,
        cluster=cfg.cluster,
        master_json_url=cfg.master_json_url,
        idle_timeout_s=round(cfg.idle_timeout_minutes * 60),
        hard_deadline=cfg.hard_deadline,
        state_file=cfg.state_file,
        shutdown_command=list(cfg.shutdown_command),
        sessions_command=list(cfg.sessions_command),
        interval_s=cfg.interval_s,
    )


def render_units(cfg: GuardConfig) -> dict[str, str]:
    """{path on the node: text} of the systemd service and timer."""
    env = _env()
    values = {
        "cluster": cfg.cluster,
        "idle_timeout_minutes": cfg.idle_timeout_minutes,
        "script_path": SCRIPT_PATH,
        "interval_s": cfg.interval_s,
    }
    return {
        f"{LAYOUT.systemd_dir}/{UNIT}.{kind}":
            env.get_template(f"idle-guard.{kind}.j2").render(**values)
        for kind in ("service", "timer")
    }


def start_command() -> str:
    """Start the guard: the timer under systemd, else the loop under sparkfab-supervise."""
    return (
        "if [ -d /run/systemd/system ]; then "
        f"systemctl daemon-reload && systemctl enable --now {UNIT}.timer; "
        f"else {shlex.quote(LAYOUT.bin_dir)}/sparkfab-service restart {UNIT}; fi"
    )


def read_state(conn: Any) -> dict[str, Any] | None:
    """The guard's last state on the master (a Fabric-like connection), or None."""
    result = conn.run(f"cat {shlex.quote(STATE_FILE)}", hide=True, warn=True)
    if not result.ok or not result.stdout.strip():
        return None
    try:
        return json.loads(result.stdout)
    except ValueError:
        return None


def describe(state: dict[str, Any] | None, now: float | None = None) -> str:
    """One line for `fab status`: the time left before the guard shuts the cluster down."""
    if not state:
        return "idle guard: no report yet (not installed, or its first check is pending)"
    now = time.time() if now is None else now
    stale = now - float(state.get("checked_at", 0)) > 3 * int(state.get("idle_timeout_s", 60))
    left = float(state["deadline"]) - now
    apps = state.get("active_apps")
    if state.get("fired_at") and float(state["fired_at"]) >= float(state["deadline"]):
        return f"idle guard: shutdown requested at {_clock(state['fired_at'])} " \
               f"({state.get('fired_reason', 'idle')})"
    sessions = int(state.get("ssh_sessions") or 0)
    busy = bool(apps) or sessions > 0
    if apps:
        now_doing = f"{apps} application(s) running"
    elif sessions:
        now_doing = f"{sessions} interactive SSH session(s) open"
    elif apps is None:
        now_doing = "master not answering (counts as idle)"
    else:
        now_doing = f"idle since {_clock(state['last_busy_at'])}"
    line = (
        f"idle guard: {now_doing}; shutdown in {_minutes(left)} at "
        f"{_clock(state['deadline'])} ({state.get('deadline_reason', 'idle')})"
    )
    if busy:
        line += f"; the {_minutes(state['idle_timeout_s'])} idle clock restarts when it ends"
    if stale:
        line += f"; WARNING: last check {_clock(state.get('checked_at', 0))}, the guard may be down"
    return line


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(float(epoch)))


def _minutes(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def install(conn: Any, cfg: GuardConfig) -> None:
    """Put the guard on the master (a Fabric-like connection, after the Spark install, which
    provides sparkfab-service) and start it. Re-running it replaces the rendered files.
    """
    sudo = "" if getattr(conn, "user", "root") == "root" else "sudo -n "
    files = {SCRIPT_PATH: (render_script(cfg), "0755")}
    files.update({path: (text, "0644") for path, text in render_units(cfg).items()})
    # Staged in a new folder of the SSH user's private ~/.sparkfab, never a fixed /tmp
    # path another user of the master could create first (root installs what is there).
    made = conn.run(f"{PRIVATE_DIR_COMMAND.format(dir=HOME_DIR)} && "
                    f"mktemp -d {HOME_DIR}/idle-guard.XXXXXXXX", hide=True)
    staging = made.stdout.strip()
    if not _STAGING.fullmatch(staging):
        raise UserError(f"could not make a staging folder on the master (got {staging!r})",
                        "check the SSH user's home on the master (`fab ssh`)")
    try:
        for path, (text, mode) in files.items():
            staged = f"{staging}/{Path(path).name}"
            conn.put(io.BytesIO(text.encode()), staged)
            conn.run(f"{sudo}install -D -m {mode} {shlex.quote(staged)} {shlex.quote(path)}",
                     hide=True)
    finally:
        conn.run(f"rm -rf {shlex.quote(staging)}", hide=True, warn=True)
    conn.run(f"{sudo}mkdir -p {shlex.quote(str(Path(cfg.state_file).parent))}", hide=True)
    conn.run(f"{sudo}sh -c {shlex.quote(start_command())}", hide=True)


def install_for(remote: Any, inv: Inventory, settings: Any,
                out: Any = print) -> GuardConfig | None:
    """The install's hook, run once Spark is up: the guard per the settings' idle timeout
    and max lifetime (None when idle_timeout_minutes is 0: no guard)."""
    minutes = getattr(settings, "idle_timeout_minutes", 0) or 0
    if minutes <= 0:
        out("idle guard: off (idle_timeout_minutes is 0)")
        return None
    cfg = config_for(inv, minutes, getattr(settings, "max_lifetime_hours", 0) or 0)
    install(remote.connection(inv.master), cfg)
    out(f"idle guard: on {inv.master.name}, shuts the cluster down after {minutes} idle "
        "minutes" + (f" or at {_clock(cfg.hard_deadline)}" if cfg.hard_deadline else ""))
    return cfg
