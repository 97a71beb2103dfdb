"""Stopping a process group named by a pid file on a node: the driver of a run, the
notebook server. One shell snippet for both, run by the user that wrote the file."""

from __future__ import annotations

import shlex

# Grace before SIGKILL: the driver stops its executors and the server its kernels on TERM;
# a process that ignores TERM (an inherited SIG_IGN, a hung JVM) is killed anyway.
GRACE_S = 15

# The pid file is written by the service user: only a plain process id above 1 is
# signalled ("0", "-1", "1" or text would reach other process groups). `kill -TERM -PGID`
# without `--`: dash, Debian's sh, reads `--` as a pid and signals nothing.
_STOP_GROUP = (
    'pid=$(cat "$1" 2>/dev/null) || exit 0\n'
    '[ "$3" = remove ] && rm -f "$1"\n'
    'case $pid in\n'
    '    ""|*[!0-9]*|0*|1) echo "not a process group id: $pid" >&2; exit 0 ;;\n'
    'esac\n'
    'kill -TERM "-$pid" 2>/dev/null || exit 0\n'
    'waited=0\n'
    'while kill -0 "-$pid" 2>/dev/null; do\n'
    '    if [ "$waited" -ge "$2" ]; then kill -KILL "-$pid" 2>/dev/null; exit 0; fi\n'
    '    sleep 1; waited=$((waited + 1))\n'
    'done\n'
)


def stop_command(prefix: str, pidfile: str, grace_s: int = GRACE_S,
                 remove_pidfile: bool = False) -> str:
    """A shell command (run as `prefix`: sudo/runuser or nothing) that TERMs the group whose
    id the pid file holds, KILLs it after `grace_s`, and always exits 0."""
    args = " ".join(shlex.quote(a) for a in (
        pidfile, str(int(grace_s)), "remove" if remove_pidfile else "keep"))
    return f"{prefix}sh -c {shlex.quote(_STOP_GROUP)} _ {args} 2>/dev/null || true"
