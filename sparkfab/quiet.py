"""Lines of no use to a user that no setting turns off, and a way to keep them off a
terminal: what TensorFlow's C++ prints as it is imported, before its logging is set up
(TF_CPP_MIN_LOG_LEVEL does not reach it), and the JVM's note on the incubator module
Spark 4 enables. The job's output is filtered line by line (localjob.py); an import in
this process goes through `native_stderr_filtered`."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)"
                   r"|I0000 [0-9:. ]+\d+ port\.cc:\d+\] oneDNN custom operations"
                   r"|WARNING: Using incubator modules: jdk\.incubator\.vector$)")


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """While inside, file descriptor 2 (where C++ libraries write, past Python's
    sys.stderr) goes to a temporary file; on the way out every line of it that is not
    NOISE is written to the real stderr, so a real warning or error still shows."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(True)
                    if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
