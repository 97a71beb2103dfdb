"""What a native library writes to file descriptor 2 during an import: its banner is
dropped, anything else still reaches the user (sparkfab/quiet.py)."""

from __future__ import annotations

import subprocess
import sys

CHILD = r"""
import os
from sparkfab.quiet import native_stderr_filtered
with native_stderr_filtered():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                b"written to STDERR\n")
    os.write(2, b"I0000 00:00:1796292502.550467    5827 port.cc:153] oneDNN custom "
                b"operations are on.\n")
    os.write(2, b"E0000 something real went wrong\n")
    print("inside", flush=True)
os.write(2, b"after\n")
"""


def test_the_banner_goes_and_a_real_message_stays() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout == "inside\n"
    assert out.stderr == "E0000 something real went wrong\nafter\n"


def test_what_was_held_is_shown_even_when_the_import_fails() -> None:
    child = CHILD.replace('print("inside", flush=True)', 'raise SystemExit("boom")')
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert "E0000 something real went wrong" in out.stderr and "boom" in out.stderr
    assert "oneDNN" not in out.stderr
