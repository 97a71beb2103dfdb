"""tests/cluster/conftest.py's rule: in CI (root, `CI` set) a skipped local-cloud test fails
the run and is named with its reason; elsewhere a skip stays a skip. Checked on a tiny
suite run by pytest itself (pytester) under a copy of the real conftest."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CLUSTER_CONFTEST = Path(__file__).resolve().parents[1] / "cluster" / "conftest.py"

TINY = textwrap.dedent("""\
    import pytest

    def test_runs():
        pass

    def test_needs_a_precondition():
        pytest.skip("the precondition is missing")
""")
SKIPS_ITSELF = textwrap.dedent("""\
    import pytest

    pytest.skip("this module cannot run here", allow_module_level=True)

    def test_never():
        pass
""")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    folder = pytester.mkdir("cluster")
    (folder / "conftest.py").write_text(CLUSTER_CONFTEST.read_text())
    (folder / "test_tiny.py").write_text(TINY)
    (folder / "test_whole_module.py").write_text(SKIPS_ITSELF)
    return pytester


def _as(monkeypatch: pytest.MonkeyPatch, *, ci: str | None, euid: int) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(os, "geteuid", lambda: euid)


def test_in_ci_as_root_every_skipped_local_cloud_test_fails_the_run_by_name(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _as(monkeypatch, ci="true", euid=0)
    result = suite.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "*local-cloud tests skipped in CI: the run fails*",
        "SKIPPED IN CI cluster/test_tiny.py::test_needs_a_precondition: "
        "the precondition is missing",
        "SKIPPED IN CI cluster/test_whole_module.py: this module cannot run here",
    ], consecutive=False)


@pytest.mark.parametrize(("ci", "euid"), [(None, 0), ("true", 1000), ("false", 0)])
def test_outside_ci_a_skip_stays_a_skip_with_its_reason(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, euid: int
) -> None:
    _as(monkeypatch, ci=ci, euid=euid)
    result = suite.runpytest("-p", "no:cacheprovider", "-rs")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    if euid == 0:
        result.assert_outcomes(passed=1, skipped=2)
        result.stdout.fnmatch_lines(["SKIPPED * the precondition is missing"])
    else:  # the conftest's own precondition, with its true reason
        result.assert_outcomes(passed=0, skipped=3)
        result.stdout.fnmatch_lines(["SKIPPED * local cloud unavailable: needs root*"])
    assert "SKIPPED IN CI" not in result.stdout.str()
