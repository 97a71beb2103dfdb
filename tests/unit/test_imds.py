"""The local cloud's IMDSv2 (sparkfab/localcloud/imds.py): EC2's behaviour, real clients.

Everything runs on 127.0.0.1 with a socket the test binds, except the one namespace test
(root only). Credentials are made at run time: this file holds none.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import socket
import string
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.credentials import InstanceMetadataProvider
from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher

from sparkfab.localcloud import imds
from sparkfab.localcloud.imds import (
    TOKEN_HEADER,
    TTL_HEADER,
    Credentials,
    Identity,
    MetadataServer,
    MotoCredentials,
    MotoIdentity,
)

if TYPE_CHECKING:
    from aws_fixtures import Cloud

pytest_plugins = ["aws_fixtures"]
pytestmark = pytest.mark.timeout(60)  # a hang is a bug

REGION = "eu-west-3"
ROLE = "sparkfab-node"
ACCOUNT = "123456789012"


def fake_credentials() -> Credentials:
    alphabet = string.ascii_uppercase + string.digits
    return Credentials(
        access_key_id="ASIA" + "".join(secrets.choice(alphabet) for _ in range(16)),
        secret_access_key=secrets.token_urlsafe(30),
        token=secrets.token_urlsafe(120),
        expiration=datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc),
        last_updated=datetime(2030, 1, 2, 2, 4, 5, tzinfo=timezone.utc),
    )


def identity(**changes: Any) -> Identity:
    base = Identity(
        instance_id="i-0123456789abcdef0", region=REGION, availability_zone=REGION + "a",
        instance_type="t3.large", private_ip="10.77.0.4", account_id=ACCOUNT,
        ami_id="ami-0abcdef1234567890",
        role_arn=f"arn:aws:iam::{ACCOUNT}:role/sparkfab/{ROLE}",
        profile_arn=f"arn:aws:iam::{ACCOUNT}:instance-profile/sparkfab/{ROLE}",
        profile_id="AIPAEXAMPLEPROFILEID", architecture="x86_64",
        launch_time=datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc),
    )
    return replace(base, **changes)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Imds:
    """A MetadataServer on 127.0.0.1, and a plain HTTP client for it."""

    def __init__(self, ident: Identity, creds: Callable[[Identity], Credentials],
                 clock: Clock) -> None:
        self.ident = ident
        self.log: list[str] = []
        self.clock = clock
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        self.port = sock.getsockname()[1]
        self.server = MetadataServer(sock, lambda: self.ident, creds, self.log.append,
                                     clock=clock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read().decode()
        finally:
            conn.close()

    def token(self, ttl: int = 60) -> str:
        status, _, body = self.request("PUT", "/latest/api/token", {TTL_HEADER: str(ttl)})
        assert status == 200
        return body

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        status, _, body = self.request("GET", path, {TOKEN_HEADER: token} if token else {})
        return status, body


@pytest.fixture
def creds() -> Credentials:
    return fake_credentials()


@pytest.fixture
def server(creds: Credentials) -> Iterator[Imds]:
    srv = Imds(identity(), lambda _ident: creds, Clock())
    srv.server.start()
    yield srv
    srv.server.stop()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore honours proxy variables; a proxy in the way would not be our server.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)


# ---- the token flow --------------------------------------------------------------------


def test_a_token_from_put_opens_every_get(server: Imds) -> None:
    status, headers, token = server.request("PUT", "/latest/api/token", {TTL_HEADER: "21600"})
    assert status == 200
    assert headers[TTL_HEADER] == "21600"  # echoed, as EC2 does
    assert headers["Content-Type"] == "text/plain"
    assert len(token) >= 40 and token != server.token()  # random, one per PUT

    assert server.get("/latest/meta-data/instance-id", token) == (200, "i-0123456789abcdef0")
    assert server.get("/latest/meta-data/instance-type", token) == (200, "t3.large")
    assert server.get("/latest/meta-data/ami-id", token) == (200, "ami-0abcdef1234567890")
    assert server.get("/latest/meta-data/local-ipv4", token) == (200, "10.77.0.4")
    assert server.get("/latest/meta-data/placement/region", token) == (200, REGION)
    # botocore asks for the zone with a trailing slash; EC2 answers that too.
    assert server.get("/latest/meta-data/placement/availability-zone/", token) == (
        200, "eu-west-3a")
    host = "ip-10-77-0-4.eu-west-3.compute.internal"
    assert server.get("/latest/meta-data/hostname", token) == (200, host)
    assert server.get("/latest/meta-data/local-hostname", token) == (200, host)


def test_listings_are_one_name_a_line_with_a_slash_for_directories(server: Imds) -> None:
    token = server.token()
    status, body = server.get("/latest/meta-data/", token)
    assert status == 200
    assert body.split("\n") == ["ami-id", "hostname", "iam/", "instance-id", "instance-type",
                                "local-hostname", "local-ipv4", "placement/"]
    assert server.get("/latest/meta-data/iam/", token) == (200, "info\nsecurity-credentials/")
    assert server.get("/latest/meta-data/iam/security-credentials/", token) == (200, ROLE)
    assert server.get("/latest/dynamic/instance-identity/", token) == (200, "document")


def test_get_without_a_token_is_401_when_tokens_are_required(server: Imds) -> None:
    assert server.get("/latest/meta-data/instance-id")[0] == 401
    assert server.get("/latest/meta-data/iam/security-credentials/" + ROLE)[0] == 401


def test_a_wrong_or_forged_token_is_401(server: Imds) -> None:
    assert server.get("/latest/meta-data/instance-id", "not-a-token")[0] == 401
    assert server.get("/latest/meta-data/instance-id", secrets.token_urlsafe(56))[0] == 401
    good = server.token()
    forged = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
    assert server.get("/latest/meta-data/instance-id", forged)[0] == 401
    # Another server's token (another instance, or this one before a restart) is no good.
    other = Imds(identity(), lambda _i: fake_credentials(), server.clock)
    with other.server:
        assert server.get("/latest/meta-data/instance-id", other.token())[0] == 401


def test_a_token_expires_after_its_ttl(server: Imds) -> None:
    token = server.token(ttl=5)
    server.clock.now += 4.9
    assert server.get("/latest/meta-data/instance-id", token)[0] == 200
    server.clock.now += 0.2
    assert server.get("/latest/meta-data/instance-id", token)[0] == 401
    assert server.get("/latest/meta-data/instance-id", server.token())[0] == 200


@pytest.mark.parametrize("ttl", [None, "", "0", "21601", "-1", "abc", "1.5", "99999999"])
def test_a_missing_or_bad_ttl_is_400(server: Imds, ttl: str | None) -> None:
    headers = {} if ttl is None else {TTL_HEADER: ttl}
    assert server.request("PUT", "/latest/api/token", headers)[0] == 400


def test_ttl_bounds_are_ec2s(server: Imds) -> None:
    for ttl in ("1", "21600", " 60 "):
        assert server.request("PUT", "/latest/api/token", {TTL_HEADER: ttl})[0] == 200


def test_a_put_through_a_proxy_is_403(server: Imds) -> None:
    status, _, body = server.request("PUT", "/latest/api/token",
                                     {TTL_HEADER: "60", "X-Forwarded-For": "203.0.113.9"})
    assert status == 403 and "." not in body.replace("Forbidden", "")  # no token in it


def test_other_methods_and_a_get_of_the_token_path_are_405(server: Imds) -> None:
    token = server.token()
    assert server.request("POST", "/latest/api/token", {TTL_HEADER: "60"})[0] == 405
    assert server.request("PUT", "/latest/meta-data/instance-id", {TTL_HEADER: "60"})[0] == 405
    assert server.request("DELETE", "/latest/meta-data/", {TOKEN_HEADER: token})[0] == 405
    assert server.get("/latest/api/token", token)[0] == 405


def test_unknown_paths_and_a_wrong_role_are_404(server: Imds) -> None:
    token = server.token()
    for path in ("/latest/meta-data/nope", "/latest/meta-data/instance-id/more", "/",
                 "/meta-data/instance-id", "/2009-04-04/meta-data/instance-id",
                 "/latest/meta-data/iam/security-credentials/someone-else",
                 "/latest/user-data"):
        assert server.get(path, token)[0] == 404, path


def test_without_a_profile_there_is_no_iam(server: Imds) -> None:
    server.ident = identity(role_arn=None, profile_arn=None, profile_id=None)
    token = server.token()
    assert "iam/" not in server.get("/latest/meta-data/", token)[1]
    for path in ("iam/", "iam/info", "iam/security-credentials/",
                 "iam/security-credentials/" + ROLE):
        assert server.get("/latest/meta-data/" + path, token)[0] == 404, path


def test_a_profile_without_a_role_has_info_but_no_credentials(server: Imds) -> None:
    server.ident = identity(role_arn=None)
    token = server.token()
    assert server.get("/latest/meta-data/iam/info", token)[0] == 200
    assert server.get("/latest/meta-data/iam/security-credentials/", token)[0] == 404


def test_imdsv1_is_served_when_tokens_are_optional(server: Imds) -> None:
    server.ident = identity(tokens_required=False)
    assert server.get("/latest/meta-data/instance-id") == (200, "i-0123456789abcdef0")
    # A token that is sent must still be a good one.
    assert server.get("/latest/meta-data/instance-id", "bogus")[0] == 401
    assert server.get("/latest/meta-data/instance-id", server.token())[0] == 200


def test_a_disabled_endpoint_refuses_everything(server: Imds) -> None:
    token = server.token()
    server.ident = identity(endpoint_enabled=False, tokens_required=False)
    assert server.request("PUT", "/latest/api/token", {TTL_HEADER: "60"})[0] == 403
    assert server.get("/latest/meta-data/instance-id", token)[0] == 403
    assert server.get("/latest/meta-data/instance-id")[0] == 403


def test_the_token_reply_carries_the_hop_limit_as_its_ip_ttl(server: Imds) -> None:
    server.ident = identity(hop_limit=2)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/latest/meta-data/instance-id")
        conn.getresponse().read()
        (accepted,) = server.server._httpd.open_connections()  # keep-alive: still open
        default_ttl = accepted.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        assert default_ttl != 2
        conn.request("PUT", "/latest/api/token", headers={TTL_HEADER: "60"})
        assert conn.getresponse().read()
        assert accepted.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 2
    finally:
        conn.close()


# ---- the documents -----------------------------------------------------------------------


def test_role_credentials_are_ec2s_json(server: Imds, creds: Credentials) -> None:
    token = server.token()
    status, body = server.get("/latest/meta-data/iam/security-credentials/" + ROLE, token)
    assert status == 200
    doc = json.loads(body)
    assert list(doc) == ["Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey",
                         "Token", "Expiration"]
    assert doc == {
        "Code": "Success", "LastUpdated": "2030-01-02T02:04:05Z", "Type": "AWS-HMAC",
        "AccessKeyId": creds.access_key_id, "SecretAccessKey": creds.secret_access_key,
        "Token": creds.token, "Expiration": "2030-01-02T03:04:05Z",
    }
    assert '"Code" : "Success"' in body  # EC2's layout, which shell scripts grep


def test_iam_info_and_the_identity_document(server: Imds) -> None:
    token = server.token()
    info = json.loads(server.get("/latest/meta-data/iam/info", token)[1])
    assert info["Code"] == "Success"
    assert info["InstanceProfileArn"] == server.ident.profile_arn
    assert info["InstanceProfileId"] == "AIPAEXAMPLEPROFILEID"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["LastUpdated"])
    doc = json.loads(server.get("/latest/dynamic/instance-identity/document", token)[1])
    assert {k: doc[k] for k in ("accountId", "architecture", "availabilityZone", "imageId",
                                "instanceId", "instanceType", "pendingTime", "privateIp",
                                "region", "version")} == {
        "accountId": ACCOUNT, "architecture": "x86_64", "availabilityZone": "eu-west-3a",
        "imageId": "ami-0abcdef1234567890", "instanceId": "i-0123456789abcdef0",
        "instanceType": "t3.large", "pendingTime": "2030-01-01T12:00:00Z",
        "privateIp": "10.77.0.4", "region": REGION, "version": "2017-09-30",
    }


def test_a_failing_credentials_source_is_a_bare_500_and_a_log_line() -> None:
    def broken(_ident: Identity) -> Credentials:
        raise ConnectionError("moto at 10.77.0.1:5000 said: key=SECRETVALUE")

    srv = Imds(identity(), broken, Clock())
    with srv.server:
        token = srv.token()
        status, body = srv.get("/latest/meta-data/iam/security-credentials/" + ROLE, token)
        # The rest of the metadata is unaffected.
        assert srv.get("/latest/meta-data/instance-id", token)[0] == 200
    assert status == 500
    assert "SECRETVALUE" not in body and "moto" not in body
    assert any("credentials" in line and "ConnectionError" in line for line in srv.log)
    assert not any("SECRETVALUE" in line for line in srv.log)


def test_a_failing_identity_source_is_a_500() -> None:
    def broken() -> Identity:
        raise ConnectionError("moto down")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    log: list[str] = []
    server = MetadataServer(sock, broken, lambda _i: fake_credentials(), log.append)
    with server:
        conn = http.client.HTTPConnection(*server.address, timeout=5)
        conn.request("PUT", "/latest/api/token", headers={TTL_HEADER: "60"})
        assert conn.getresponse().status == 500
        conn.close()
    assert any("identity unavailable (ConnectionError)" in line for line in log)


def test_the_log_has_one_line_per_request_and_no_secret(server: Imds,
                                                        creds: Credentials) -> None:
    token = server.token()
    server.get("/latest/meta-data/iam/security-credentials/" + ROLE, token)
    server.get("/latest/meta-data/nope", token)
    assert server.log == [
        "imds: PUT /latest/api/token 200",
        f"imds: GET /latest/meta-data/iam/security-credentials/{ROLE} 200",
        "imds: GET /latest/meta-data/nope 404",
    ]
    text = "\n".join(server.log)
    for secret in (token, creds.access_key_id, creds.secret_access_key, creds.token):
        assert secret not in text
    for secret in (creds.access_key_id, creds.secret_access_key, creds.token):
        assert secret not in repr(creds)


def test_stop_closes_the_socket_and_keepalive_connections_and_is_idempotent(
        server: Imds) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("PUT", "/latest/api/token", headers={TTL_HEADER: "60"})
    conn.getresponse().read()
    server.server.stop()
    server.server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/latest/meta-data/instance-id")
        conn.getresponse()
    conn.close()


# ---- real clients: botocore's own IMDS code ----------------------------------------------


def test_botocore_fetches_the_role_credentials_with_imdsv2(server: Imds,
                                                           creds: Credentials) -> None:
    fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=server.url, env={})
    got = fetcher.retrieve_iam_role_credentials()
    assert got == {
        "role_name": ROLE, "access_key": creds.access_key_id,
        "secret_key": creds.secret_access_key, "token": creds.token,
        "expiry_time": "2030-01-02T03:04:05Z",
    }
    # It used a token: IMDSv1 is off (tokens_required) and it still got them.
    assert "imds: PUT /latest/api/token 200" in server.log
    assert InstanceMetadataRegionFetcher(timeout=2, num_attempts=1, base_url=server.url,
                                         env={}).retrieve_region() == REGION


def test_botocores_credential_provider_loads_refreshable_credentials(
        server: Imds, creds: Credentials) -> None:
    fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=server.url, env={})
    loaded = InstanceMetadataProvider(iam_role_fetcher=fetcher).load()
    assert loaded is not None and loaded.method == "iam-role"
    frozen = loaded.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        creds.access_key_id, creds.secret_access_key, creds.token)


def test_botocore_distrusts_credentials_near_expiry(creds: Credentials) -> None:
    """Why MotoCredentials rotates at half-life: botocore takes IMDS credentials with under
    12-20 minutes left as an IMDS outage and extends their expiry past the real one."""
    soon = replace(creds, expiration=datetime.now(timezone.utc) + timedelta(minutes=5))
    srv = Imds(identity(), lambda _i: soon, Clock())
    with srv.server:
        got = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=srv.url,
                                      env={}).retrieve_iam_role_credentials()
    assert got["expiry_time"] != imds.ec2_time(soon.expiration)


# ---- moto as the source ------------------------------------------------------------------


def _profile(cloud: Cloud) -> str:
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    cloud.iam.create_role(RoleName=ROLE, Path="/sparkfab/",
                          AssumeRolePolicyDocument=json.dumps(trust))
    arn = cloud.iam.create_instance_profile(InstanceProfileName=ROLE,
                                            Path="/sparkfab/")["InstanceProfile"]["Arn"]
    cloud.iam.add_role_to_instance_profile(InstanceProfileName=ROLE, RoleName=ROLE)
    return str(arn)


def _launch(cloud: Cloud, **kw: Any) -> str:
    return str(cloud.ec2.run_instances(ImageId=cloud.ami, MinCount=1, MaxCount=1,
                                       InstanceType="t3.large", **kw)["Instances"][0]
               ["InstanceId"])


class CountingSts:
    """moto's STS, counting AssumeRole calls."""

    def __init__(self, sts: Any) -> None:
        self.sts = sts
        self.calls: list[dict[str, Any]] = []

    def assume_role(self, **kw: Any) -> Any:
        self.calls.append(kw)
        return self.sts.assume_role(**kw)


def test_moto_identity_and_sts_credentials(cloud: Cloud) -> None:
    profile_arn = _profile(cloud)
    instance = _launch(cloud, IamInstanceProfile={"Arn": profile_arn},
                       MetadataOptions={"HttpTokens": "required",
                                        "HttpPutResponseHopLimit": 2})
    ident = MotoIdentity(cloud.ec2, cloud.iam, instance)()
    inst = cloud.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0][
        "Instances"][0]
    assert (ident.instance_id, ident.region, ident.instance_type, ident.ami_id) == (
        instance, REGION, "t3.large", cloud.ami)
    assert ident.availability_zone.startswith(REGION)
    assert ident.private_ip == inst["PrivateIpAddress"]
    assert ident.account_id == ACCOUNT
    assert ident.profile_arn == profile_arn
    assert ident.role_arn == f"arn:aws:iam::{ACCOUNT}:role/sparkfab/{ROLE}"
    assert ident.role_name == ROLE and ident.profile_id
    assert (ident.tokens_required, ident.hop_limit, ident.endpoint_enabled) == (True, 2, True)
    assert ident.hostname.endswith(".eu-west-3.compute.internal")

    now = [datetime.now(timezone.utc)]
    sts = CountingSts(boto3.client("sts", REGION))
    source = MotoCredentials(sts, now=lambda: now[0])
    first = source(ident)
    assert first.access_key_id.startswith("ASIA") and first.token
    assert first.expiration.tzinfo is not None
    assert timedelta(minutes=59) < first.expiration - now[0] <= timedelta(minutes=61)
    assert sts.calls == [{"RoleArn": ident.role_arn, "RoleSessionName": instance,
                          "DurationSeconds": 3600}]

    now[0] += timedelta(minutes=29)  # inside the cache window
    assert source(ident) == first and len(sts.calls) == 1
    now[0] += timedelta(minutes=2)  # under 30 minutes left: rotated
    second = source(ident)
    assert len(sts.calls) == 2 and second.access_key_id != first.access_key_id
    # Nothing served is ever close enough to expiry for botocore to take it as an IMDS
    # outage (it then extends the expiry itself, past the real one: see imds.py).
    assert second.expiration - now[0] > timedelta(minutes=20)

    # What the credentials are: the role's session for this instance, as STS sees them.
    caller = boto3.client("sts", REGION, aws_access_key_id=second.access_key_id,
                          aws_secret_access_key=second.secret_access_key,
                          aws_session_token=second.token).get_caller_identity()
    assert caller["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/{ROLE}/{instance}"


def test_an_instance_without_a_profile_has_no_role(cloud: Cloud) -> None:
    instance = _launch(cloud, MetadataOptions={"HttpTokens": "optional"})
    ident = MotoIdentity(cloud.ec2, cloud.iam, instance)()
    assert (ident.role_arn, ident.profile_arn, ident.profile_id) == (None, None, None)
    assert ident.tokens_required is False and ident.hop_limit == 1
    with pytest.raises(LookupError):
        MotoCredentials(boto3.client("sts", REGION))(ident)


def test_moto_identity_is_cached_briefly(cloud: Cloud) -> None:
    instance = _launch(cloud)
    clock = Clock()
    source = MotoIdentity(cloud.ec2, cloud.iam, instance, ttl_s=5, clock=clock)
    assert source().tokens_required is False
    cloud.ec2.modify_instance_metadata_options(InstanceId=instance, HttpTokens="required")
    clock.now += 4
    assert source().tokens_required is False  # cached
    clock.now += 2
    assert source().tokens_required is True


def test_botocore_gets_sts_credentials_through_a_moto_backed_server(cloud: Cloud) -> None:
    instance = _launch(cloud, IamInstanceProfile={"Arn": _profile(cloud)},
                       MetadataOptions={"HttpTokens": "required"})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = MetadataServer(sock, MotoIdentity(cloud.ec2, cloud.iam, instance),
                            MotoCredentials(boto3.client("sts", REGION)))
    with server:
        base = "http://{}:{}".format(*server.address)
        got = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=base,
                                      env={}).retrieve_iam_role_credentials()
    assert got["role_name"] == ROLE and got["access_key"].startswith("ASIA")
    caller = boto3.client("sts", REGION, aws_access_key_id=got["access_key"],
                          aws_secret_access_key=got["secret_key"],
                          aws_session_token=got["token"]).get_caller_identity()
    assert caller["Arn"].endswith(f":assumed-role/{ROLE}/{instance}")


# ---- inside a network namespace (root) ---------------------------------------------------


def test_served_at_169_254_169_254_inside_a_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace")
    ns = "sfimdstest" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    server: MetadataServer | None = None
    try:
        before = Path(f"/proc/self/task/{threading.get_native_id()}/ns/net").resolve()
        sock = imds.listen_in_namespace(ns)
        # The caller stayed where it was; a second call (a restarted server) is fine too.
        assert Path(f"/proc/self/task/{threading.get_native_id()}/ns/net").resolve() == before
        server = MetadataServer(sock, identity, lambda _i: fake_credentials())
        server.start()

        def curl(*args: str) -> str:
            return subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time",
                                   "5", *args], check=True, capture_output=True, text=True,
                                  timeout=10).stdout

        token = curl("-X", "PUT", "-H", f"{TTL_HEADER}: 60",
                     "http://169.254.169.254/latest/api/token")
        assert curl("-H", f"{TOKEN_HEADER}: {token}",
                    "http://169.254.169.254/latest/meta-data/instance-id") == (
            "i-0123456789abcdef0")
        server.stop()
        imds.listen_in_namespace(ns).close()  # idempotent address, rebinding at once
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)
