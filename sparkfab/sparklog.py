"""Turn a spark-submit's driver output into the few lines a user wants while it runs.

stdout (the job's own prints) passes through. Of stderr, Spark's INFO chatter becomes
progress: the application id, each executor and the host it runs on, each stage with its
task count, task progress at most every PROGRESS_EVERY_S, stage end; WARN and ERROR lines
pass (but for a few known harmless ones), and so does anything that is not a log4j line
(Python tracebacks, the job's messages). Everything is kept in the full log regardless.
"""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

PROGRESS_EVERY_S = 5.0
TAIL_LINES = 40

# log4j2's default Spark layout: "26/11/23 07:33:05 INFO TaskSetManager: message"
_LOG = re.compile(
    r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) (\S+?): (.*)$"
)
_APP = re.compile(r"Connected to Spark cluster with app ID (\S+)")
_EXECUTOR = re.compile(
    r"Granted executor ID \S+?/(\d+) on hostPort ([^:\s]+):\d+ with (\d+) core"
)
# "... from ResultStage 3 (MapPartitionsRDD[12] at collect at /tmp/run/featurize_pca.py:212)"
# (a long call site continues on the next lines: then the first line's part is shown)
_STAGE_START = re.compile(
    r"Submitting (\d+) missing tasks from \w+ (\d+) \(\S+ at (.*?)(?:\)|$)"
)
_TASK_DONE = re.compile(
    r"Finished task [\d.]+ in stage (\d+)\.\d+ \(TID \d+\) in \d+ ms on (\S+) "
    r"\(executor (\S+)\) \((\d+)/(\d+)\)"
)
_STAGE_DONE = re.compile(r"\w+ (\d+) \((.*?)\) finished in (\d+) ms")
_UI = re.compile(r"Successfully started service 'SparkUI' on port (\d+)")
_EXECUTOR_LOST = re.compile(r"Lost executor (\S+) on ([^:\s]+)")
# S3A failures buried in a Java stack trace, turned into one line a user can act on.
_S3A_FAILURES = (
    (re.compile(r"AccessDeniedException: (s3a://[^\s:]+)"),
     "S3 denied access to {0} (the nodes' role may only use the cluster's bucket)"),
    (re.compile(r"UnknownStoreException: .*?(s3a://[^\s:]+|[Bb]ucket \S+)"),
     "S3 bucket not found: {0}"),
    (re.compile(r"NoSuchBucket.*?(s3a://[^\s:]+)"), "S3 bucket not found: {0}"),
)
# Harmless on every cluster: shown in the full log only.
_NOISE = (
    "NativeCodeLoader",
    "Your hostname",
    "Set SPARK_LOCAL_IP",
    "could not bind on port",
    "Using Spark's default log4j profile",
    "WARNING: Using incubator modules",
    "SLF4J: ",
    "hadoop-metrics2",
    "invoked the Syncable API",  # event log on S3: flushed at the end, as designed
    "dev.ludovic.netlib",  # pure-Java BLAS/LAPACK fallback for the PCA: fine at this size
    # S3A without the cloud committers: noted once in the README, not on every write
    "Using standard FileOutputCommitter",
)


@dataclass
class DriverLog:
    """Feed it lines; it returns what to show, and remembers what the summary needs."""

    show: Callable[[str], None]
    verbose: bool = False
    clock: Callable[[], float] = time.monotonic
    app_id: str = ""
    ui_port: int | None = None
    executors: dict[str, str] = field(default_factory=dict)  # executor id -> host
    tasks_by_host: Counter[str] = field(default_factory=Counter)
    lost_executors: list[str] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    _last_progress: dict[str, float] = field(default_factory=dict)
    _in_hidden_record: bool = False  # continuation lines of a record not shown stay hidden

    def stdout(self, line: str) -> None:
        self.tail.append(line)
        self.show(line)

    def stderr(self, line: str) -> None:
        if self.verbose:
            self.show(line)
        m = _LOG.match(line)
        if m is None:
            if not line.strip() or any(n in line for n in _NOISE):
                return
            self.tail.append(line)
            # A log record can span lines (query plans, Java stack traces): they follow it
            # indented. Anything else (the job's messages, Python tracebacks) is shown.
            if self._in_hidden_record and line.startswith((" ", "\t", "+-", ":")):
                return
            self._in_hidden_record = False
            if not self.verbose:
                self.show(line)
            return
        level, _logger, message = m.groups()
        shown = self._progress(message)
        if level in ("WARN", "ERROR", "FATAL"):
            self.tail.append(f"{level} {message}")
            if shown is None and not any(n in line for n in _NOISE):
                shown = f"{level} {message}"
        self._in_hidden_record = True  # a record's stack trace or plan is never echoed
        if shown is not None and not self.verbose:
            self.show(f"[spark] {shown}")

    def _progress(self, message: str) -> str | None:
        if m := _APP.search(message):
            self.app_id = m.group(1)
            return f"application {self.app_id} started"
        if m := _UI.search(message):
            self.ui_port = int(m.group(1))
            return None
        if m := _EXECUTOR.search(message):
            executor, host, cores = m.groups()
            self.executors[executor] = host
            return f"executor {executor} on {host} ({cores} core{'' if cores == '1' else 's'})"
        if m := _STAGE_START.search(message):
            tasks, stage, call_site = m.groups()
            call_site = re.sub(r"\S*/", "", call_site).strip().removesuffix(" at")
            return f"stage {stage}: {call_site}, {tasks} tasks"
        if m := _TASK_DONE.search(message):
            stage, host, _executor, done, total = m.groups()
            self.tasks_by_host[host] += 1
            now = self.clock()
            if done == total or now - self._last_progress.get(stage, -1e9) >= PROGRESS_EVERY_S:
                self._last_progress[stage] = now
                return f"stage {stage}: {done}/{total} tasks done"
            return None
        if m := _STAGE_DONE.search(message):
            stage, _what, ms = m.groups()
            return f"stage {stage} finished in {int(ms) / 1000:.1f} s"
        if m := _EXECUTOR_LOST.search(message):
            self.lost_executors.append(f"{m.group(1)}@{m.group(2)}")
            return None  # its WARN/ERROR line is shown as it is
        return None

    def failure_line(self) -> str:
        """The most telling line for a one-line error: the job's own `error:` line, else an
        S3 failure named in a stack trace, else a Python exception, else Spark's last ERROR."""
        lines = list(self.tail)
        own = [s for s in lines if s.lower().startswith("error:")]
        if own:
            return own[-1]
        for line in reversed(lines):
            for pattern, text in _S3A_FAILURES:
                if m := pattern.search(line):
                    return text.format(m.group(1))
        for pick in (
            lambda s: s.lower().startswith("error:"),
            lambda s: bool(re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", s)),
            lambda s: s.startswith(("ERROR ", "FATAL ")),
        ):
            found = [s for s in lines if pick(s)]
            if found:
                return found[-1]
        return lines[-1] if lines else "no output"

    def hosts_summary(self) -> str:
        if not self.tasks_by_host:
            return "no tasks finished"
        return ", ".join(f"{h}: {n}" for h, n in sorted(self.tasks_by_host.items()))


class LineSplitter:
    """A write()-able stream that hands complete lines to a callback (\\r ends a line too)."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self._partial = ""

    def write(self, data: str) -> int:
        text = (self._partial + data).replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self.on_line(line)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._partial:
            self.on_line(self._partial)
            self._partial = ""
