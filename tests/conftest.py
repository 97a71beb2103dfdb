"""Suite-wide: the figures tests measure (lines they print as `figure: ...`) are gathered
from the captured output and printed together at the end of the run, so CI shows them
without `-s`."""

from __future__ import annotations

from typing import Any

_FIGURES: list[str] = []
_PREFIX = "figure: "


def pytest_runtest_logreport(report: Any) -> None:
    # Each phase's report repeats the earlier phases' output: read only its own section.
    own = "".join(text for name, text in report.sections
                  if name == f"Captured stdout {report.when}")
    for line in own.splitlines():
        if line.startswith(_PREFIX):
            _FIGURES.append(f"{report.nodeid.split('::')[0]}: {line[len(_PREFIX):]}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("figures measured in this run")
        for line in _FIGURES:
            terminalreporter.write_line(line)
