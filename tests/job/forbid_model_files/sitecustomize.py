"""Loaded by every Spark Python worker of the broadcast test (via spark.executorEnv).

It makes opening a model/weights file or any non-loopback network connection raise inside
the executors, and logs that it is active (and any attempt) so the test can tell the hook
really ran: the job must still succeed, its weights coming only from the broadcast. With
SPARKFAB_FORBID_TENSORFLOW=1 (the onnx engine), importing TensorFlow, Keras or tf2onnx
raises too: those executors must run ONNX Runtime alone.
"""

import importlib.abc
import os
import socket
import sys

_LOG = os.environ.get("SPARKFAB_FORBID_LOG", "")
_SUFFIXES = (".h5", ".keras", ".hdf5")
_FORBIDDEN_PACKAGES = ("tensorflow", "keras", "tf2onnx", "tf_keras")


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


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: any import of a forbidden package is logged and refused."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in _FORBIDDEN_PACKAGES:
            _log(f"VIOLATION import {name}")
            raise ImportError(f"executor may not import {name} (onnx engine)")
        return None


sys.addaudithook(_hook)
if os.environ.get("SPARKFAB_FORBID_TENSORFLOW") == "1":
    sys.meta_path.insert(0, _NoTensorFlow())
    _log(f"tensorflow forbidden; already imported: "
         f"{sorted(m for m in sys.modules if m.split('.')[0] in _FORBIDDEN_PACKAGES)}")
try:  # HDF5 files are opened by the C library, not by Python's open(): patch h5py too
    import h5py

    h5py.File = _ForbiddenH5
except ImportError:
    pass
_log("hook active")
# pyspark's daemon forks the workers: each child says it carries the hook too.
os.register_at_fork(after_in_child=lambda: _log("hook active"))
