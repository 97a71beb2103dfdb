"""Where sparkfab puts things on a node: the one place the templates and the tasks read.

Everything sparkfab owns lives under /opt/sparkfab, /opt/spark (a symlink to the versioned
Spark directory), /var/lib/spark and /var/log/spark, so `rm -rf` of those undoes an install.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SERVICE_USER = "spark"  # runs the daemons and the jobs; owns the secret
SPARK_LINK = "/opt/spark"
SPARKFAB_HOME = "/opt/sparkfab"


@dataclass(frozen=True)
class Layout:
    spark_link: str = SPARK_LINK
    spark_conf: str = f"{SPARK_LINK}/conf"
    sparkfab_home: str = SPARKFAB_HOME
    bin_dir: str = f"{SPARKFAB_HOME}/bin"  # daemon launchers, supervisor, service script
    state_dir: str = f"{SPARKFAB_HOME}/state"  # what each step installed (digests)
    downloads: str = f"{SPARKFAB_HOME}/downloads"  # verified downloads, removed once used
    python_env: str = f"{SPARKFAB_HOME}/python"  # venv or conda env: driver + executors
    conda_root: str = f"{SPARKFAB_HOME}/conda"  # the Miniforge install (conda path only)
    wheelhouse: str = f"{SPARKFAB_HOME}/wheelhouse"
    run_dir: str = "/run/sparkfab"  # supervisor pid files (gone after a reboot, as they should)
    work_dir: str = "/var/lib/spark/work"  # workers: application directories
    runs_dir: str = "/var/lib/spark/runs"  # run-job's folders, the service user's, 0700
    local_dir: str = "/var/lib/spark/local"  # shuffle and spill files
    log_dir: str = "/var/log/spark"
    # `fab notebook`: the service user's (its home is /var/lib/spark); notebooks/ is the
    # server's root, session/ what one server start ships (launcher, config, job modules).
    notebook_dir: str = "/var/lib/spark/notebook"
    systemd_dir: str = "/etc/systemd/system"
    service_user: str = SERVICE_USER

    def spark_home_for(self, spark_version: str) -> str:
        """The versioned directory /opt/spark points at."""
        return f"/opt/spark-{spark_version}"

    @property
    def python(self) -> str:
        return f"{self.python_env}/bin/python"

    @property
    def spark_submit(self) -> str:
        return f"{self.spark_link}/bin/spark-submit"

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "python": self.python, "spark_submit": self.spark_submit}


LAYOUT = Layout()
