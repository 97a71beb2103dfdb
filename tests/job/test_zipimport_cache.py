"""job/zipimport_cache.py: an unchanged zip is not read again per task; a changed one is."""

from __future__ import annotations

import importlib
import os
import sys
import zipfile
import zipimport
from pathlib import Path

import zipimport_cache


def _write_zip(path: Path, modules: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in modules.items():
            zf.writestr(name, text)


def test_only_a_changed_zip_is_read_again(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "pkgs.zip"
    modules = {"zpkg/__init__.py": "", "zpkg/sub/__init__.py": "", "zpkg/sub/a.py": "A = 1\n"}
    _write_zip(archive, modules)
    monkeypatch.syspath_prepend(str(archive))
    for name in ("zpkg", "zpkg.sub", "zpkg.sub.a", "zpkg.sub.b"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    # The patch is per process: the test puts the original back afterwards.
    monkeypatch.setattr(zipimport.zipimporter, "invalidate_caches",
                        zipimport.zipimporter.invalidate_caches)
    reads: list[str] = []
    read_directory = zipimport._read_directory

    def counting(path: str):
        if path == str(archive):
            reads.append(path)
        return read_directory(path)

    monkeypatch.setattr(zipimport, "_read_directory", counting)
    assert importlib.import_module("zpkg.sub.a").A == 1

    zipimport_cache.install()
    zipimport_cache.install()  # idempotent: one wrapper, not two
    del reads[:]
    for _ in range(3):  # as before three tasks
        importlib.invalidate_caches()
    assert reads == []

    modules["zpkg/sub/b.py"] = "B = 2\n"
    _write_zip(archive, modules)
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    importlib.invalidate_caches()
    assert reads  # read again, so its new module is found
    assert importlib.import_module("zpkg.sub.b").B == 2
