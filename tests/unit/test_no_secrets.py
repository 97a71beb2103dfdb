"""No AWS secret ends up in anything sparkfab writes: inventory, logs, output, the repo.

The tasks run in-process against moto with realistic-looking credentials in the
environment (built at run time, so this file holds none); then every file they wrote and
everything they printed is scanned for AWS key ids, 40-character secret keys and
credential field names.
"""

from __future__ import annotations

import random
import re
import stat
import string
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from invoke import Context

from sparkfab import inventory
from sparkfab.aws import session as session_mod

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(120)  # moto in-process: a hang is a bug

REPO = Path(__file__).resolve().parents[2]
KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
SECRET_KEY = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])")
FIELD_NAMES = re.compile(r"aws_secret_access_key|aws_session_token", re.IGNORECASE)


def _looks_secret(candidate: str) -> bool:
    # AWS secret keys mix cases and digits; hex ids and hashes do not.
    return (any(c.isupper() for c in candidate) and any(c.islower() for c in candidate)
            and any(c.isdigit() for c in candidate))


def find_secrets(text: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """What in `text` looks like an AWS credential (after removing `allowed` values)."""
    for value in allowed:
        text = text.replace(value, "<allowed>")
    hits = KEY_ID.findall(text) + FIELD_NAMES.findall(text)
    hits += [m for m in SECRET_KEY.findall(text) if _looks_secret(m)]
    return hits


def _fake_credentials() -> tuple[str, str]:
    rng = random.Random()
    key_id = "ASIA" + "".join(rng.choice(string.ascii_uppercase + string.digits)
                              for _ in range(16))
    alphabet = string.ascii_letters + string.digits + "/+"
    secret = "".join(rng.choice(alphabet) for _ in range(37)) + "aZ9"
    return key_id, secret


def test_the_scanner_finds_what_it_looks_for() -> None:
    key_id, secret = _fake_credentials()
    assert find_secrets(f'{{"id": "{key_id}"}}') == [key_id]
    assert find_secrets(f"secret={secret}\n") == [secret]
    assert find_secrets("[default]\nAWS_Secret_Access_Key = x") == ["AWS_Secret_Access_Key"]
    assert find_secrets(f"token {secret}", allowed=(secret,)) == []
    assert find_secrets("i-0123456789abcdef0 sg-0abc ami-0123456789abcdef0") == []


def test_nothing_the_tasks_write_or_print_holds_an_aws_secret(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tasks

    key_id, secret = _fake_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", secret[::-1] + "x" * 60)
    session_mod.forget_sessions()
    (cloud.home / "sparkfab.yaml").write_text(yaml.safe_dump({
        "cluster": cloud.cluster, "region": cloud.region, "workers": 1,
        "operator_cidr": cloud.operator_cidr,
        "ami_ssm_parameter": "/sparkfab-test/ubuntu-24.04/ami-id",
        "public_key_path": str(cloud.home / "id_ed25519.pub"),
    }))
    before = set(cloud.home.rglob("*"))

    tasks.provision(Context(), install=False)
    inv = inventory.load(cloud.cluster)
    assert inv is not None and inv.spark_secret
    tasks.status(Context())
    written = {p: p.read_text() for p in set(cloud.home.rglob("*")) - before if p.is_file()}
    tasks.teardown(Context(), yes=True)
    out = capsys.readouterr()

    assert any(p.name == f"{cloud.cluster}.json" for p in written), "the inventory was scanned"
    assert any(p.suffix == ".log" for p in written), "the log was scanned"
    log = next(p for p in written if p.suffix == ".log")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "teardown" in log.read_text() or "deleted" in log.read_text()
    # The Spark RPC secret is expected in the inventory (0600); it is not an AWS secret.
    allowed = (inv.spark_secret,)
    for path, text in written.items():
        assert find_secrets(text, allowed) == [], path
    assert find_secrets(out.out + out.err, allowed) == []
    assert key_id not in out.out + out.err and secret not in out.out + out.err


def test_no_tracked_file_of_the_repo_holds_an_aws_key() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    hits = {}
    for name in filter(None, files):
        path = REPO / name
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary, or deleted in the working tree
        found = KEY_ID.findall(text)
        if found:
            hits[name] = found
    assert hits == {}
