"""`fab upload-data`: a local image folder into s3://bucket/prefix, in parallel and resumable.

Resuming needs no journal: S3 makes an object visible only once it is complete (a single
PUT, or a multipart upload that boto3 completes or aborts), so after an interruption the
bucket holds whole files only, and the next run skips every key already there with the
same size. Same size is the rule users are told; content changes that keep the size are
not detected (that would cost a hash of every file and of every object).
"""

from __future__ import annotations

import mimetypes
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from sparkfab.aws.session import client_error, denied_action
from sparkfab.errors import UserError
from sparkfab.s3path import S3Path

DEFAULT_WORKERS = 8
# Each worker thread uploads one file at a time; boto3's own thread pool per file would
# only multiply threads for the small images this tool moves.
_PER_FILE = TransferConfig(use_threads=False)
_NOT_FOUND = {"NoSuchBucket", "404", "NotFound"}
_OTHER_REGION = {"PermanentRedirect", "301", "AuthorizationHeaderMalformed",
                 "IllegalLocationConstraintException"}
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId",
           "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}


@dataclass(frozen=True)
class LocalFile:
    path: Path
    key: str
    size: int


@dataclass
class UploadResult:
    uploaded: int = 0
    uploaded_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    seconds: float = 0.0


def s3_error(exc: Exception, bucket: str, action: str) -> UserError:
    """One clear line for the S3 failures users meet; the raw code is kept in the text."""
    exc = client_error(exc)  # type: ignore[assignment]
    if isinstance(exc, NoCredentialsError):
        return UserError(
            f"no AWS credentials found while trying to {action}",
            "configure a profile (`aws configure`) or set AWS_PROFILE; sparkfab never "
            "stores keys",
        )
    if isinstance(exc, EndpointConnectionError):
        return UserError(f"cannot reach S3 to {action}: {exc}", "check the network and region")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return UserError(
                f"bucket {bucket!r} not found ({code})",
                "check the name and region; `fab provision` creates the cluster's bucket",
            )
        if code in _OTHER_REGION:
            return UserError(
                f"bucket {bucket!r} is in another region than the one configured ({code})",
                "set region (sparkfab.yaml, SPARKFAB_REGION or --region) to the bucket's",
            )
        if code in _DENIED:
            refused = denied_action(exc) if code == "AccessDenied" else None
            return UserError(
                f"access denied to bucket {bucket!r} while trying to {action} ({code}"
                + (f": AWS denied {refused})" if refused else ")"),
                "check that your AWS identity may list and write this bucket (`fab "
                "operator-policy` prints every permission sparkfab needs)",
            )
        return UserError(f"S3 refused to {action} in {bucket!r}: {code}: {exc}")
    return UserError(f"S3 failed to {action} in {bucket!r}: {exc}")


def local_files(src: Path, dest: S3Path) -> list[LocalFile]:
    """Every regular file under src, recursive, except hidden ones (.DS_Store, .part files)."""
    if not src.exists():
        raise UserError(
            f"folder {str(src)!r} does not exist", "give the folder of images to upload"
        )
    if not src.is_dir():
        raise UserError(f"{str(src)!r} is not a folder", "give a folder; its tree is kept as keys")
    found = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        found.append(LocalFile(path, dest.key(rel.as_posix()), path.stat().st_size))
    return found


def remote_sizes(client: Any, dest: S3Path) -> dict[str, int]:
    """{key: size} of what is already under dest."""
    sizes: dict[str, int] = {}
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=dest.bucket, Prefix=dest.prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                sizes[obj["Key"]] = obj["Size"]
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, dest.bucket, f"list {dest.s3}") from exc
    return sizes


class Progress:
    """Count, bytes and rate, redrawn in place on a terminal, a line every few s otherwise."""

    def __init__(self, total_files: int, total_bytes: int, out: TextIO | None = None) -> None:
        self.total_files, self.total_bytes = total_files, total_bytes
        self.files = self.bytes = 0
        self.out = out or sys.stdout
        self._tty = self.out.isatty()
        self._every = 0.2 if self._tty else 5.0
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        with self._lock:
            self.files += 1
            self.bytes += size
            now = time.monotonic()
            if now - self._last >= self._every:
                self._last = now
                self._draw(final=False)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        return (
            f"upload: {self.files}/{self.total_files} files, "
            f"{_mb(self.bytes)}/{_mb(self.total_bytes)} MB, "
            f"{_mb(self.bytes / elapsed)} MB/s, {self.files / elapsed:.1f} files/s"
        )

    def finish(self) -> None:
        with self._lock:
            self._draw(final=True)

    def _draw(self, final: bool) -> None:
        if self._tty:
            self.out.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.out.write(self.line() + "\n")
        self.out.flush()


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def upload_folder(
    client: Any,
    src: Path,
    dest: S3Path,
    workers: int = DEFAULT_WORKERS,
    out: TextIO | None = None,
    on_uploaded: Callable[[LocalFile], None] | None = None,
) -> UploadResult:
    """Upload what is missing or has another size; the rest is skipped.

    Stops at the first error that would hit every file (bucket missing, access denied,
    no credentials) instead of failing the same way thousands of times. Other failures
    are collected and reported, and a re-run retries just those files.
    `on_uploaded` runs after each successful upload (tests use it to interrupt).
    """
    out = out or sys.stdout
    start = time.monotonic()
    files = local_files(src, dest)
    existing = remote_sizes(client, dest)
    todo = [f for f in files if existing.get(f.key) != f.size]
    result = UploadResult()
    for f in files:
        if existing.get(f.key) == f.size:
            result.skipped += 1
            result.skipped_bytes += f.size
    out.write(
        f"{len(files)} files in {src}: {result.skipped} already in {dest.s3} "
        f"with the same size, {len(todo)} to upload\n"
    )
    out.flush()
    progress = Progress(len(todo), sum(f.size for f in todo), out)
    lock = threading.Lock()
    stop = threading.Event()  # set on the first fatal error: queued files are not tried

    def put(f: LocalFile) -> None:
        if stop.is_set():
            return
        content_type = mimetypes.guess_type(f.path.name)[0] or "application/octet-stream"
        try:
            client.upload_file(
                str(f.path), dest.bucket, f.key,
                ExtraArgs={"ContentType": content_type}, Config=_PER_FILE,
            )
        except (ClientError, BotoCoreError, S3UploadFailedError) as failed:
            exc = client_error(failed)
            err = s3_error(exc, dest.bucket, f"upload to {dest.s3}")
            if _fatal(exc):
                stop.set()
                raise err from exc
            with lock:
                result.failed.append((f.key, err.message))
            return
        except OSError as exc:  # the local file vanished or is unreadable
            with lock:
                result.failed.append((f.key, f"cannot read {f.path}: {exc.strerror}"))
            return
        with lock:
            result.uploaded += 1
            result.uploaded_bytes += f.size
        progress.add(f.size)
        if on_uploaded is not None:
            try:
                on_uploaded(f)
            except BaseException:
                stop.set()
                raise

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="upload")
    futures: list[Future[None]] = []
    try:
        futures = [pool.submit(put, f) for f in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in _in_order(futures, done):
            exc = fut.exception()
            if exc is not None:
                raise exc
    except BaseException:
        stop.set()
        for fut in futures:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        result.seconds = time.monotonic() - start
        out.write(
            f"\nupload interrupted after {result.uploaded} files; run the same command "
            "again to upload only what is still missing\n"
        )
        out.flush()
        raise
    pool.shutdown(wait=True)
    if todo:
        progress.finish()
    result.seconds = time.monotonic() - start
    return result


def _fatal(exc: BaseException) -> bool:
    if isinstance(exc, NoCredentialsError | EndpointConnectionError):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in _NOT_FOUND or code in _DENIED or code in _OTHER_REGION
    return False


def _in_order(futures: list[Future[None]], done: set[Future[None]]) -> Iterator[Future[None]]:
    # Report the first failure in submission order, so the message does not depend on timing.
    return (f for f in futures if f in done)


def summary(result: UploadResult, dest: S3Path) -> str:
    line = (
        f"uploaded {result.uploaded} files ({_mb(result.uploaded_bytes)} MB) to {dest.s3} "
        f"in {result.seconds:.1f} s; skipped {result.skipped} already there"
    )
    if result.failed:
        shown = "; ".join(f"{k}: {why}" for k, why in result.failed[:3])
        line += f"; {len(result.failed)} FAILED ({shown})"
    return line
