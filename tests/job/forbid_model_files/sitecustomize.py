"""Loaded by every Spark Python worker of the broadcast test (via spark.executorEnv).

It makes opening a model/weights file or any non-loopback network connection raise inside
the executors, and logs that it is active (and any attempt) so the test can tell the hook
really ran: the job must still succeed, its weights coming only from the broadcast.
"""

import os
import socket
import sys

_LOG = os.environ.get("SPARKFAB_FORBID_LOG", "")
_SUFFIXES = (".h5", ".keras", ".hdf5")


def _log(line: str) -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {line}\n")


def _hook(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], (str, bytes)):
        name = os.fsdecode(args[0])
        if name.endswith(_SUFFIXES) and not name.endswith(".py"):
            _log(f"VIOLATION open {name}")
            raise PermissionError(f"executor may not open model files: {name}")
    elif event in ("urllib.Request", "http.client.connect"):
        _log(f"VIOLATION {event} {args[:2]}")
        raise PermissionError("executor may not download")
    elif event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1", "::1", "localhost"
        ):
            _log(f"VIOLATION connect {address}")
            raise PermissionError(f"executor may not connect to {address}")


class _ForbiddenH5:
    def __init__(self, *args, **kwargs):
        _log(f"VIOLATION h5py.File {args[:1]}")
        raise PermissionError("executor may not open HDF5 files")


sys.addaudithook(_hook)
try:  # HDF5 files are opened by the C library, not by Python's open(): patch h5py too
    import h5py

    h5py.File = _ForbiddenH5
except ImportError:
    pass
_log("hook active")
# pyspark's daemon forks the workers: each child says it carries the hook too.
os.register_at_fork(after_in_child=lambda: _log("hook active"))
