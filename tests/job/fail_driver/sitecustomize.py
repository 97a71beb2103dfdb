"""Loaded by the job's processes in tests/job/test_failed_runs.py (through PYTHONPATH): it
makes the driver's run go wrong at one point, after the real work of that point is done.

SPARKFAB_FAIL_AT=pca    reduce.pca fits and projects, then raises
SPARKFAB_FAIL_AT=write  the CSV matrix is written (after the Parquet files), then it raises
SPARKFAB_FAIL_AT=taken  as the writes end, another writer puts a file into --output
                        (SPARKFAB_INTRUDER names it): the commit must refuse
"""

import importlib.abc
import importlib.machinery
import os
import sys

_AT = os.environ.get("SPARKFAB_FAIL_AT", "")


def _patch(module):
    name = module.__name__
    if name == "reduce" and _AT == "pca":
        real_pca = module.pca

        def pca(*args, **kwargs):
            result = real_pca(*args, **kwargs)
            result.scores.count()  # the projection ran too
            raise RuntimeError("injected failure during PCA")

        module.pca = pca
    elif name == "outputs" and _AT in ("write", "taken"):
        real_write = module.write_single_csv

        def write_single_csv(df, store, csv_name, header):
            real_write(df, store, csv_name, header)
            if _AT == "write":
                raise RuntimeError("injected failure during the writes")
            intruder = os.environ["SPARKFAB_INTRUDER"]
            os.makedirs(os.path.dirname(intruder), exist_ok=True)
            with open(intruder, "w", encoding="utf-8") as fh:
                fh.write("someone else's\n")

        module.write_single_csv = write_single_csv


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in ("reduce", "outputs"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if _AT:
    sys.meta_path.insert(0, _Finder())
