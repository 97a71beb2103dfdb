"""Keep an unchanged zip's directory across PySpark tasks in a Python worker.

PySpark's worker calls importlib.invalidate_caches() before every task, and Python 3.11's
zipimport answers it by reading a zip's whole directory again once per package imported
from it: the workers import pyspark from pyspark.zip, one importer per pyspark package.
That took 0.27-0.34 s of each task in the job on the 2-core test machine (64 ms in an idle
process that imported only pyspark.sql), before the task did anything. A reused worker
(the model is kept per worker) pays it on every task of every stage. Here a zip is read
again only when its size or modification time changed, which keeps what invalidation is
for: a zip replaced on disk is still seen.
"""

from __future__ import annotations

import os
import sys
import zipimport
from typing import Any

_MARK = "_sparkfab_reads_changed_zips_only"
_STAMP = "_sparkfab_read_as"  # on each importer: one zip has an importer per package


def _stamp(archive: str) -> tuple[int, int] | None:
    try:
        st = os.stat(archive)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def install() -> None:
    """Idempotent; per process. The zips already read count as read as they are now."""
    importer = zipimport.zipimporter
    if getattr(importer.invalidate_caches, _MARK, False):
        return
    reread = importer.invalidate_caches
    for finder in list(sys.path_importer_cache.values()):
        if isinstance(finder, importer):
            setattr(finder, _STAMP, _stamp(finder.archive))

    def invalidate_caches(self: Any) -> None:
        stamp = _stamp(self.archive)
        if stamp is None or getattr(self, _STAMP, None) != stamp:
            reread(self)
            setattr(self, _STAMP, stamp)

    setattr(invalidate_caches, _MARK, True)
    importer.invalidate_caches = invalidate_caches  # type: ignore[method-assign]
