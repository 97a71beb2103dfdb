"""Where node downloads come from, how they are verified, and how they are staged in S3."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.metadata
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from sparkfab import artifacts, wheelhouse
from sparkfab.artifacts import ChecksumMismatch, Mirror, Source
from sparkfab.errors import UserError

POM = """<project><properties>
    <aws-java-sdk.version>1.12.720</aws-java-sdk.version>
    <aws-java-sdk-v2.version>2.24.6</aws-java-sdk-v2.version>
</properties></project>"""
REGION = "eu-west-3"


def test_spark_and_hadoop_versions_are_read_off_the_installed_pyspark() -> None:
    assert artifacts.spark_version() == importlib.metadata.version("pyspark")
    hadoop = artifacts.hadoop_version()
    assert (artifacts.pyspark_home() / "jars" / f"hadoop-client-api-{hadoop}.jar").exists()


def test_hadoop_version_comes_from_the_client_api_jar(tmp_path: Path) -> None:
    (tmp_path / "hadoop-client-api-3.9.2.jar").touch()
    (tmp_path / "hadoop-client-runtime-3.9.2.jar").touch()
    assert artifacts.hadoop_version(tmp_path) == "3.9.2"


@pytest.mark.parametrize(
    "jars", [[], ["hadoop-client-api-3.4.1.jar", "hadoop-client-api-3.4.2.jar"]]
)
def test_an_unreadable_hadoop_version_says_what_to_do(tmp_path: Path, jars: list[str]) -> None:
    for j in jars:
        (tmp_path / j).touch()
    with pytest.raises(UserError, match="expected one hadoop-client-api") as err:
        artifacts.hadoop_version(tmp_path)
    assert "reinstall pyspark" in err.value.hint


def test_the_sdk_bundle_version_is_the_one_hadoop_project_pins() -> None:
    assert artifacts.sdk_bundle_version(POM) == "2.24.6"
    with pytest.raises(UserError, match="no <aws-java-sdk-v2.version>"):
        artifacts.sdk_bundle_version("<project><properties/></project>", "3.3.6")


def test_origins_are_apache_maven_central_and_the_pinned_installer() -> None:
    v = artifacts.spark_version()
    hadoop = artifacts.hadoop_version()
    by_name = {s.name: s for s in artifacts.origin_sources("conda", pom_text=POM)}
    spark = by_name["spark"]
    assert spark.url == (
        f"https://archive.apache.org/dist/spark/spark-{v}/spark-{v}-bin-hadoop3.tgz"
    )
    assert (spark.algo, spark.digest_url) == ("sha512", spark.url + ".sha512")
    assert by_name["hadoop-aws"].url == (
        "https://repo1.maven.org/maven2/org/apache/hadoop/hadoop-aws/"
        f"{hadoop}/hadoop-aws-{hadoop}.jar"
    )
    assert by_name["aws-sdk-bundle"].url == (
        "https://repo1.maven.org/maven2/software/amazon/awssdk/bundle/2.24.6/bundle-2.24.6.jar"
    )
    assert by_name["aws-sdk-bundle"].digest_url.endswith("bundle-2.24.6.jar.sha1")
    mf = by_name["miniforge"]
    assert mf.url.startswith("https://github.com/conda-forge/miniforge/releases/download/")
    assert (mf.algo, len(mf.digest)) == ("sha256", 64)
    assert "miniforge" not in {s.name for s in artifacts.origin_sources("venv", pom_text=POM)}


def test_published_checksum_files_in_all_their_layouts_are_read() -> None:
    data = b"spark"
    h = hashlib.sha512(data).hexdigest()
    name = "spark-4.0.1-bin-hadoop3.tgz"
    gpg = f"{name}: " + " ".join(h[i:i + 8].upper() for i in range(0, 128, 8))
    wrapped = gpg[:70] + "\n" + " " * 30 + gpg[70:]
    for text in (f"{h}  {name}\n", f"{h} *{name}\n", f"{h}\n", wrapped):
        assert artifacts.parse_digest_file(text, name, "sha512") == h
    with pytest.raises(UserError, match="no sha512 digest for spark"):
        artifacts.parse_digest_file(f"{h}  other.tgz\n", name, "sha512")


def test_a_checksum_mismatch_names_the_file_and_the_fix(tmp_path: Path) -> None:
    f = tmp_path / "hadoop-aws-3.4.1.jar"
    f.write_bytes(b"not the jar")
    with pytest.raises(ChecksumMismatch) as err:
        artifacts.verify_file(f, "sha1", "0" * 40)
    msg = str(err.value)
    assert "hadoop-aws-3.4.1.jar: sha1 mismatch: expected 0000000000000000..." in msg
    assert f"delete {f}" in err.value.hint


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on loopback serving tmp_path/www (stopped after the test)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_fetch_origin_keeps_only_a_verified_download(
    http_dir: tuple[str, Path], tmp_path: Path
) -> None:
    base, www = http_dir
    (www / "a.tgz").write_bytes(b"payload")
    (www / "a.tgz.sha512").write_text(f"{hashlib.sha512(b'payload').hexdigest()}  a.tgz\n")
    src = Source("spark", "a.tgz", f"{base}/a.tgz", "sha512", digest_url=f"{base}/a.tgz.sha512")
    got = artifacts.fetch_origin(src, tmp_path / "dl", progress=lambda m: None)
    assert got.read_bytes() == b"payload"

    (www / "a.tgz").write_bytes(b"tampered")  # the origin now serves something else
    got.unlink()
    with pytest.raises(ChecksumMismatch, match="a.tgz: sha512 mismatch"):
        artifacts.fetch_origin(src, tmp_path / "dl", progress=lambda m: None)
    assert list((tmp_path / "dl").iterdir()) == []  # nothing unverified is left behind


def _mirror(root: Path, contents: dict[str, bytes]) -> Mirror:
    root.mkdir(parents=True, exist_ok=True)
    m = Mirror(root, facts={"spark_version": "4.0.1"})
    for name, data in contents.items():
        p = root / f"{name}.bin"
        p.write_bytes(data)
        m.add(name, p)
    m.save()
    return m


def test_a_mirror_round_trips_and_detects_a_changed_file(tmp_path: Path) -> None:
    m = _mirror(tmp_path / "m", {"spark": b"s" * 100, "wheelhouse": b"w" * 10})
    loaded = Mirror.load(tmp_path / "m")
    assert loaded.files == m.files and loaded.facts == {"spark_version": "4.0.1"}
    assert (tmp_path / "m" / "spark.bin.sha512").read_text().startswith(m.get("spark").sha512)
    loaded.verify()
    (tmp_path / "m" / "spark.bin").write_bytes(b"t" * 100)
    with pytest.raises(ChecksumMismatch, match="spark.bin: sha512 mismatch"):
        loaded.verify()
    with pytest.raises(UserError, match="not an artifact mirror"):
        Mirror.load(tmp_path)


@mock_aws
def test_stage_uploads_once_and_presigns_every_artifact(tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(
        Bucket="bkt-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    m = _mirror(tmp_path / "m", {"spark": b"s" * 100, "hadoop-aws": b"h" * 10})
    quiet = {"progress": lambda msg: None}

    first = artifacts.stage(s3, "bkt-artifacts", m, **quiet)
    assert sorted(first.uploaded) == ["hadoop-aws", "spark"] and first.skipped == []
    again = artifacts.stage(s3, "bkt-artifacts", m, **quiet)
    assert again.uploaded == [] and sorted(again.skipped) == ["hadoop-aws", "spark"]

    (tmp_path / "m" / "spark.bin").write_bytes(b"new spark")
    m.add("spark", tmp_path / "m" / "spark.bin")
    changed = artifacts.stage(s3, "bkt-artifacts", m, **quiet)
    assert changed.uploaded == ["spark"] and changed.skipped == ["hadoop-aws"]

    urls = artifacts.presigned_downloads(s3, "bkt-artifacts", m, expires_s=600)
    spark = urls["spark"]
    key = artifacts.staged_key(m.get("spark"))
    assert key.startswith("sparkfab/artifacts/") and key.endswith("/spark.bin")
    assert (spark.algo, spark.digest) == ("sha512", hashlib.sha512(b"new spark").hexdigest())
    assert key in spark.url and "X-Amz-Signature=" in spark.url and "Expires=600" in spark.url
    body = s3.get_object(Bucket="bkt-artifacts", Key=key)["Body"].read()
    assert body == b"new spark"


def test_mirror_downloads_point_at_the_mirror_base_url(tmp_path: Path) -> None:
    m = _mirror(tmp_path / "m", {"spark": b"s"})
    d = artifacts.mirror_downloads("http://10.0.0.1:8000/mirror/", m)["spark"]
    assert d.url == "http://10.0.0.1:8000/mirror/spark.bin" and d.digest == m.get("spark").sha512


def test_the_wheelhouse_holds_the_job_packages_pinned_and_nothing_operator_side() -> None:
    pins = dict(p.split("==") for p in wheelhouse.requirements())
    assert pins["pyspark"] == importlib.metadata.version("pyspark")
    assert pins["numpy"] == importlib.metadata.version("numpy")
    assert set(pins) == {*wheelhouse.JOB_PACKAGES, *wheelhouse.NOTEBOOK_PACKAGES}
    # the notebook's pins are sparkfab's own (pyproject's `notebook` extra), exactly
    assert pins["jupyterlab"] == importlib.metadata.version("jupyterlab")
    assert pins["nbclient"] == importlib.metadata.version("nbclient")
    assert not {"fabric", "paramiko", "jinja2", "pytest", "moto"} & set(pins)
    assert pins["boto3"] == importlib.metadata.version("boto3")  # the notebook server's S3
    assert wheelhouse.tarball_name("3.11") == "wheelhouse-cp311-manylinux_2_34_x86_64.tar"
