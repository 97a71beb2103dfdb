"""Spark standalone's TCP ports: the one place the installer, run-job and the tunnels read.

None of them is ever opened to the internet: the security group admits only SSH (22) from
the operator and all traffic between cluster members; `fab ui` reaches the UIs through SSH.
"""

from __future__ import annotations

MASTER_RPC = 7077  # spark://<master private ip>:7077
MASTER_UI = 8080  # the master's web UI; /json/ is its machine-readable status
WORKER_UI = 8081
APP_UI = 4040  # the running application's (driver's) UI, on the master in client mode
NOTEBOOK = 8888  # JupyterLab (`fab notebook`), on the master's 127.0.0.1 only: SSH tunnel
