"""What a node keeps of the install's secrets: the step scripts (configure.sh holds the
Spark RPC secret) are gone from the login user's home once they ran, and a presigned
URL never appears on a command line (`ps` shows those to every user of the node)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sparkfab.inventory import ROLE_MASTER, Inventory, Node
from sparkfab.layout import Layout
from sparkfab.remote import STEP_DIR, Remote
from sparkfab.render import render

SIGNED = ("http://10.77.0.1:5000/b/k?X-Amz-Credential=AKIA%2Fx&X-Amz-Signature=0a1b2c3d"
          "&X-Amz-Expires=43200")


def _prelude(tmp_path: Path) -> str:
    layout = Layout(state_dir=str(tmp_path / "state"), downloads=str(tmp_path / "dl"))
    return render("_lib.sh", layout=layout.as_dict())


def test_curl_gets_the_url_on_stdin_not_on_its_command_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A curl that records what `ps` would show and what it read, then "downloads".
    (bin_dir / "curl").write_text(
        '#!/bin/bash\nprintf "%s\\n" "$@" >"$LOG.argv"\ncat >"$LOG.stdin"\n'
        'while [ $# -gt 0 ]; do [ "$1" = -o ] && printf data >"$2"; shift; done\n')
    (bin_dir / "curl").chmod(0o755)
    digest = hashlib.sha512(b"data").hexdigest()
    log = tmp_path / "curl"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log)}
    script = _prelude(tmp_path) + f'fetch "$URL" "$DOWNLOADS/a.bin" sha512 {digest}\n'
    ran = subprocess.run(["bash", "-c", script], env={**env, "URL": SIGNED},
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    argv = Path(f"{log}.argv").read_text()
    assert "X-Amz-Signature" not in argv and "10.77.0.1" not in argv
    assert "--config\n-\n" in argv
    assert Path(f"{log}.stdin").read_text() == f'url = "{SIGNED}"\n'


def test_a_url_with_quotes_and_backslashes_reaches_curl_intact(tmp_path: Path) -> None:
    src = tmp_path / 'odd "name" \\ here.bin'
    src.write_bytes(os.urandom(2048))
    digest = hashlib.sha512(src.read_bytes()).hexdigest()
    url = "file://" + str(src).replace(" ", "%20")
    script = _prelude(tmp_path) + f'fetch "$URL" "$DOWNLOADS/b.bin" sha512 {digest}\n'
    ran = subprocess.run(["bash", "-c", script], env={**os.environ, "URL": url},
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "dl" / "b.bin").read_bytes() == src.read_bytes()


class _LocalConnection:
    """A Fabric-like connection that runs commands here, in a directory standing in for the
    login user's home (what sparkfab does over SSH, minus the SSH)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def run(self, command: str, **kw: Any) -> SimpleNamespace:
        p = subprocess.run(["bash", "-c", command], cwd=self.home, capture_output=True,
                           text=True, timeout=60)
        for stream, text in (("out_stream", p.stdout), ("err_stream", p.stderr)):
            if kw.get(stream) is not None:
                kw[stream].write(text)
        return SimpleNamespace(exited=p.returncode, ok=p.returncode == 0, stdout=p.stdout,
                               stderr=p.stderr)

    def sftp(self) -> Any:
        home = self.home

        class Sftp:
            def open(self, path: str, mode: str) -> Any:
                fh = open(home / path, mode + "b")  # noqa: SIM115 (closed by the caller)
                fh.chmod = lambda m: os.chmod(home / path, m)  # type: ignore[attr-defined]
                return fh

            def posix_rename(self, a: str, b: str) -> None:
                os.rename(home / a, home / b)

        return Sftp()


def test_a_step_script_is_removed_once_it_ran_failed_or_not(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    node = Node(ROLE_MASTER, "i-1", "m6i.large", "10.0.0.4", None, "master")
    remote = Remote(Inventory("demo", "eu-west-3", "root", [node]),
                    known_hosts=tmp_path / "known_hosts", out=None)
    conn = _LocalConnection(home)
    remote.connection = lambda n: conn  # type: ignore[method-assign]
    secret = "spark.authenticate.secret f00dfeed"
    ok = remote.run_script(node, "config", f"# {secret}\necho configured\n")
    assert ok.ok and "configured" in ok.stdout
    failed = remote.run_script(node, "java", f"# {secret}\necho broken >&2\nexit 3\n")
    assert not failed.ok and failed.exit_code == 3 and "broken" in failed.tail
    steps = home / STEP_DIR
    for private in (steps, steps.parent):
        assert private.is_dir() and oct(private.stat().st_mode & 0o777) == "0o700"
    assert list(steps.iterdir()) == []
    leftovers = [p for p in home.rglob("*") if p.is_file() and secret in p.read_text()]
    assert leftovers == []
