"""sparkfab's `fab` tasks: `fab --list` shows them, `fab TASK --help` documents each.

Thin on purpose: parse flags, call into the `sparkfab` package, print results. Errors a
user can fix are raised as `sparkfab.errors.UserError` and printed as one line + a hint.
"""

from __future__ import annotations

from fabric import task  # noqa: F401  (used by the sections below)

# ---- job: run-job (local mode) ---------------------------------------------------------

# ---- AWS: provision / status / teardown ------------------------------------------------

# ---- cluster install: stage ------------------------------------------------------------

# ---- on the cluster: upload-data / ui / logs / ssh -------------------------------------

# ---- local cloud: local-cloud-up / local-cloud-down ------------------------------------
