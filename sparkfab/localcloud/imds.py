"""EC2's Instance Metadata Service (IMDSv2) for one local-cloud instance.

Why: on EC2 a node never holds an access key. The instance profile's role reaches it as
temporary credentials that IMDS hands out at 169.254.169.254, and every SDK on the node
(boto3, the AWS CLI, hadoop-aws's SDK v2 for s3a://) finds them there by itself and
refreshes them before they expire. For the local cloud to test that path rather than a
shortcut, each booted node gets the same endpoint: the same URLs, the same token dance,
the same JSON, and credentials that are real STS credentials of the instance's role in
moto (so moto's IAM authorization decides what the node may do, as AWS would).

What EC2 does and this does too (checked against the AWS docs and botocore's client):
- IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600)
  returns a session token; a GET carries it in `X-aws-ec2-metadata-token`. A bad or
  expired token is 401; no token is 401 when the instance's `HttpTokens` is `required`,
  else the GET is served (IMDSv1).
- A PUT with `X-Forwarded-For` is 403: a proxy or SSRF-able web app on the node adds that
  header, and this is how IMDSv2 keeps such requests from ever getting a token.
- The PUT's reply leaves with the IP TTL set to `HttpPutResponseHopLimit`, so a token
  cannot travel further than that many hops (a container behind one more bridge needs 2).
- `HttpEndpoint` `disabled`: every request is 403.
- Tokens are HMACs of their expiry under a key that lives only in this process: no token
  store to grow, and a restarted server invalidates old tokens, as a stopped instance does.

Nothing secret is ever logged: one line per request, with method, path and status.

`listen_in_namespace` makes the listening socket inside the node's network namespace
without the caller leaving its own; `MotoIdentity` and `MotoCredentials` are the moto-backed
sources of what the server tells.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import hmac
import json
import os
import platform
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar, Union
from urllib.parse import urlsplit

from sparkfab.localcloud import netns

IMDS_ADDRESS = "169.254.169.254"
TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TOKEN_TTL_S = 21600  # EC2's limit: six hours
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")

# EC2's role credentials last hours and are rotated long before they expire, and SDKs
# rely on it: botocore (1.43) takes IMDS credentials with under 12-20 minutes left as a
# sign that IMDS is failing and *extends* their expiry on its own ("static stability"), so
# it would go on signing with a set past its real expiry. Rotating at half-life keeps
# every set served with 30+ minutes left, for one STS call per node per half hour.
ROLE_SESSION_S = 3600
REFRESH_BEFORE_S = 1800
# The server asks for the identity on every request; moto is asked at most this often.
IDENTITY_CACHE_S = 5.0
# An idle keep-alive connection is closed after this long: it holds a thread.
IDLE_CONNECTION_S = 30.0
MAX_REQUEST_BODY = 64 * 1024
# Every process of a booting node may ask at once (http.server's default is 5).
LISTEN_BACKLOG = 64

T = TypeVar("T")


def _host_architecture() -> str:
    """The node runs on this host's CPU; EC2 names it x86_64 or arm64."""
    machine = platform.machine()
    return {"aarch64": "arm64", "amd64": "x86_64"}.get(machine.lower(), machine)


@dataclass(frozen=True)
class Identity:
    """What IMDS tells about the instance (all of it from the EC2 and IAM APIs)."""

    instance_id: str
    region: str
    availability_zone: str
    instance_type: str
    private_ip: str
    account_id: str
    ami_id: str
    role_arn: str | None  # the instance profile's role (None: no profile, or no role in it)
    profile_arn: str | None
    profile_id: str | None
    tokens_required: bool = True  # MetadataOptions.HttpTokens == "required"
    hop_limit: int = 1  # MetadataOptions.HttpPutResponseHopLimit
    endpoint_enabled: bool = True  # MetadataOptions.HttpEndpoint == "enabled"
    architecture: str = field(default_factory=_host_architecture)
    launch_time: datetime | None = None  # the identity document's pendingTime
    private_dns_name: str | None = None  # None: EC2's default name for private_ip

    @property
    def role_name(self) -> str | None:
        # A role ARN may carry a path (role/sparkfab/node); IMDS names the role alone.
        return self.role_arn.rsplit("/", 1)[-1] if self.role_arn else None

    @property
    def hostname(self) -> str:
        return self.private_dns_name or ec2_hostname(self.private_ip, self.region)


@dataclass(frozen=True)
class Credentials:
    # Not in repr: a stray print, log line or traceback must not show any of them.
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    token: str = field(repr=False)
    expiration: datetime  # aware, UTC
    last_updated: datetime | None = None  # when they were issued; None: now


def ec2_hostname(ip: str, region: str) -> str:
    """EC2's private DNS name for an IP: ip-10-77-0-4.eu-west-3.compute.internal."""
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return "ip-" + ip.replace(".", "-") + "." + domain


def ec2_time(moment: datetime) -> str:
    """IMDS's timestamps: UTC, whole seconds, a Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ec2_json(document: Mapping[str, Any]) -> str:
    """IMDS's JSON layout (`"Code" : "Success"`, two-space indent), which some tools grep."""
    return json.dumps(document, indent=2, separators=(",", " : "))


# ---- tokens ---------------------------------------------------------------------------


class TokenSigner:
    """Issues and checks IMDSv2 session tokens: an expiry and a nonce, signed."""

    _PAYLOAD = struct.Struct("!d16s")
    _MAC_BYTES = 32

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock

    def issue(self, ttl_s: int) -> str:
        payload = self._PAYLOAD.pack(self._clock() + ttl_s, secrets.token_bytes(16))
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode()

    def valid(self, token: str) -> bool:
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return False
        if len(raw) != self._PAYLOAD.size + self._MAC_BYTES:
            return False
        payload, mac = raw[: self._PAYLOAD.size], raw[self._PAYLOAD.size:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return False
        expires, _nonce = self._PAYLOAD.unpack(payload)
        return bool(self._clock() < expires)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()


def parse_ttl(value: str | None) -> int | None:
    """The token TTL a PUT asks for, or None when it is missing or out of EC2's range."""
    if value is None or not re.fullmatch(r"[0-9]{1,6}", value.strip()):
        return None
    ttl = int(value.strip())
    return ttl if 1 <= ttl <= MAX_TOKEN_TTL_S else None


# ---- what is served -------------------------------------------------------------------

# A metadata tree: a directory maps names to entries; a leaf is its text, or a function
# giving it when asked (credentials are fetched only when a client asks for them).
Leaf = str | Callable[[], str]
Tree = dict[str, Union["Tree", Leaf]]


@dataclass(frozen=True)
class Reply:
    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    hop_limit: int | None = None  # the IP TTL to send this reply with


def _error(status: int) -> Reply:
    # EC2's error bodies say no more than the status either.
    return Reply(status, HTTPStatus(status).phrase)


class CredentialsUnavailable(RuntimeError):
    """The credentials source failed; the client gets a bare 500."""


def identity_document(ident: Identity) -> str:
    """/latest/dynamic/instance-identity/document, as EC2 lays it out."""
    return json.dumps({
        "accountId": ident.account_id,
        "architecture": ident.architecture,
        "availabilityZone": ident.availability_zone,
        "billingProducts": None,
        "devpayProductCodes": None,
        "marketplaceProductCodes": None,
        "imageId": ident.ami_id,
        "instanceId": ident.instance_id,
        "instanceType": ident.instance_type,
        "kernelId": None,
        "pendingTime": ec2_time(ident.launch_time or datetime.now(timezone.utc)),
        "privateIp": ident.private_ip,
        "ramdiskId": None,
        "region": ident.region,
        "version": "2017-09-30",
    }, indent=2, separators=(",", " : "))


def credentials_document(creds: Credentials) -> str:
    return ec2_json({
        "Code": "Success",
        "LastUpdated": ec2_time(creds.last_updated or datetime.now(timezone.utc)),
        "Type": "AWS-HMAC",
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.token,
        "Expiration": ec2_time(creds.expiration),
    })


def listing(directory: Tree) -> str:
    """A directory as IMDS lists it: one name a line, sub-directories with a slash."""
    return "\n".join(name + "/" if isinstance(entry, dict) else name
                     for name, entry in sorted(directory.items()))


def lookup(tree: Tree, path: str) -> str | None:
    """The text at `path` under /latest/ (a listing for a directory), or None."""
    entry: Tree | Leaf = tree
    for part in filter(None, path.split("/")):
        if not isinstance(entry, dict) or part not in entry:
            return None
        entry = entry[part]
    if isinstance(entry, dict):
        return listing(entry)
    return entry if isinstance(entry, str) else entry()


# ---- the server -----------------------------------------------------------------------


def _no_log(_line: str) -> None:
    pass


class MetadataServer:
    """Serves IMDS for one instance on a listening socket it is given, in a thread.

    `identity` is asked on every request (so a ModifyInstanceMetadataOptions or a new
    profile association shows at once); `credentials` only when a client asks for them.
    """

    def __init__(self, sock: socket.socket, identity: Callable[[], Identity],
                 credentials: Callable[[Identity], Credentials],
                 log: Callable[[str], None] = _no_log, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._identity = identity
        self._credentials = credentials
        self._log = log
        self._tokens = TokenSigner(clock)
        self._started_at = datetime.now(timezone.utc)
        self._credentials_updated: datetime | None = None
        self._httpd = _HTTPServer(sock, self)
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        with self._state_lock:
            if self._stopped or self._thread is not None:
                raise RuntimeError("a MetadataServer starts once")
            # A caller may hand a bound socket that is not listening yet; listen() twice is
            # harmless, so this covers both.
            self._httpd.socket.listen(LISTEN_BACKLOG)
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            kwargs={"poll_interval": 0.5},
                                            name=f"imds-{self.address[0]}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
            thread, self._thread = self._thread, None
        if thread is not None:
            # Wakes the accept loop now rather than at its next poll: a listening socket
            # shut down for reading turns readable (its accept fails, which the loop
            # ignores) until shutdown() has told the loop to end.
            with contextlib.suppress(OSError):
                self._httpd.socket.shutdown(socket.SHUT_RD)
            self._httpd.shutdown()
            thread.join(timeout=5)
        self._httpd.server_close()
        # Keep-alive connections outlive the listening socket; a stopped instance answers
        # nothing, so they are cut too (their handler threads then end).
        self._httpd.close_connections()

    def note(self, line: str) -> None:
        self._log(line)

    def __enter__(self) -> MetadataServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- one request -> one reply (no sockets here) ----------------------------------

    def answer(self, method: str, raw_path: str, headers: Mapping[str, str]) -> Reply:
        path = urlsplit(raw_path).path
        reply = self._answer(method, path, headers)
        # Method, path, status: never a header or a body (tokens, credentials).
        self._log(f"imds: {method} {path[:200]} {reply.status}")
        return reply

    def _answer(self, method: str, path: str, headers: Mapping[str, str]) -> Reply:
        try:
            ident = self._identity()
        except Exception as exc:  # moto down: the node sees a bare 500, the log says why
            self._log(f"imds: identity unavailable ({_describe(exc)})")
            return _error(500)
        if not ident.endpoint_enabled:
            return _error(403)
        if method == "PUT":
            return self._put(ident, path, headers)
        if method == "GET":
            return self._get(ident, path, headers)
        return _error(405)

    def _put(self, ident: Identity, path: str, headers: Mapping[str, str]) -> Reply:
        if path != TOKEN_PATH:
            return _error(405)
        if headers.get("X-Forwarded-For") is not None:
            return _error(403)
        ttl = parse_ttl(headers.get(TTL_HEADER))
        if ttl is None:
            return _error(400)
        return Reply(200, self._tokens.issue(ttl), ((TTL_HEADER, str(ttl)),),
                     hop_limit=ident.hop_limit)

    def _get(self, ident: Identity, path: str, headers: Mapping[str, str]) -> Reply:
        if path == TOKEN_PATH:
            return _error(405)  # a token is only ever handed out to a PUT
        token = headers.get(TOKEN_HEADER)
        if token is not None and not self._tokens.valid(token):
            return _error(401)
        if token is None and ident.tokens_required:
            return _error(401)
        if not path.startswith("/latest/") and path != "/latest":
            return _error(404)
        try:
            body = lookup(self._tree(ident), path[len("/latest"):])
        except CredentialsUnavailable:
            return _error(500)
        return _error(404) if body is None else Reply(200, body)

    # ---- the metadata tree -------------------------------------------------------------

    def _tree(self, ident: Identity) -> Tree:
        meta: Tree = {
            "ami-id": ident.ami_id,
            "hostname": ident.hostname,
            "instance-id": ident.instance_id,
            "instance-type": ident.instance_type,
            "local-hostname": ident.hostname,
            "local-ipv4": ident.private_ip,
            "placement": {
                "availability-zone": ident.availability_zone,
                "region": ident.region,
            },
        }
        if ident.profile_arn:
            meta["iam"] = self._iam_tree(ident)
        return {
            "meta-data": meta,
            "dynamic": {"instance-identity": {"document": identity_document(ident)}},
        }

    def _iam_tree(self, ident: Identity) -> Tree:
        iam: Tree = {"info": ec2_json({
            "Code": "Success",
            "LastUpdated": ec2_time(self._credentials_updated or self._started_at),
            "InstanceProfileArn": ident.profile_arn,
            "InstanceProfileId": ident.profile_id,
        })}
        role = ident.role_name
        if role:
            iam["security-credentials"] = {role: lambda: self._credentials_json(ident)}
        return iam

    def _credentials_json(self, ident: Identity) -> str:
        try:
            creds = self._credentials(ident)
        except Exception as exc:
            self._log(f"imds: credentials for {ident.instance_id} unavailable "
                      f"({_describe(exc)})")
            raise CredentialsUnavailable from exc
        self._credentials_updated = creds.last_updated or datetime.now(timezone.utc)
        return credentials_document(creds)


def _describe(exc: BaseException) -> str:
    """An error's kind (and AWS error code), never its message: it may quote a request."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return type(exc).__name__ + (f" {code}" if code else "")


class _HTTPServer(ThreadingHTTPServer):
    """http.server on a socket made elsewhere (in another network namespace)."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, app: MetadataServer) -> None:
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()  # the one the base class made, in this thread's namespace
        self.socket = sock
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def open_connections(self) -> list[socket.socket]:
        with self._connections_lock:
            return list(self._connections)

    def close_connections(self) -> None:
        for conn in self.open_connections():
            with contextlib.suppress(OSError):  # already gone
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "EC2ws"  # what EC2's IMDS calls itself
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive, as SDKs expect
    timeout = IDLE_CONNECTION_S

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def _serve(self, method: str) -> None:
        if not self._drain_body():
            self.close_connection = True
            self._send(method, _error(400))
            return
        self._send(method, self.server.app.answer(method, self.path, self.headers))

    def _drain_body(self) -> bool:
        """Reads a request body (IMDS wants none) so the next request on the connection
        starts where it should; False when it cannot be read safely."""
        if self.headers.get("Transfer-Encoding"):
            return False
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if not length.isdigit() or int(length) > MAX_REQUEST_BODY:
            return False
        if int(length):
            self.rfile.read(int(length))
        return True

    def _send(self, method: str, reply: Reply) -> None:
        if reply.hop_limit is not None:
            # EC2's hop limit: the token's reply dies after this many routers. The
            # connection keeps the TTL, so retransmissions of the reply obey it too.
            self.connection.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, reply.hop_limit)
        body = reply.body.encode()
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # MetadataServer.answer logs, without headers

    def log_message(self, format: str, *args: Any) -> None:
        # Only http.server's own errors get here: a malformed request (its code, never the
        # request line: who knows what a broken client put in it) or an idle keep-alive
        # connection timing out (not worth a line).
        if args and isinstance(args[0], int):
            self.server.app.note(f"imds: malformed request {args[0]}")


# ---- the socket, inside the node's network namespace ----------------------------------


def listen_in_namespace(namespace: str, address: str = IMDS_ADDRESS,
                        port: int = 80) -> socket.socket:
    """A listening TCP socket bound to address:port inside network namespace
    /run/netns/<namespace>.

    The address goes on the namespace's `lo` first (as on EC2 it is link-local and answers
    on the instance itself); `ip addr replace` makes that idempotent. The socket is made by
    a short-lived thread that enters the namespace with setns(2): setns moves only the
    calling thread, and a socket stays in the namespace it was made in, so the caller (the
    watcher, serving many namespaces) never changes namespace. Needs root.
    """
    if not namespace or "/" in namespace or namespace.startswith("."):
        raise ValueError(f"not a network namespace name: {namespace!r}")
    netns.ip("-n", namespace, "link", "set", "lo", "up")
    netns.ip("-n", namespace, "addr", "replace", f"{address}/32", "dev", "lo")
    return in_namespace(namespace, lambda: _listening_socket(address, port))


def in_namespace(namespace: str, make: Callable[[], T]) -> T:
    """`make()`, run in a fresh thread that has entered network namespace `namespace`.

    A fresh thread each time, never a pool: a thread that has entered a namespace must not
    be reused for anything else, and this one ends with its work.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            box["value"] = make()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"setns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread (os.setns from Python 3.12; ctypes before)."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _listening_socket(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # A restarted node's server rebinds at once, whatever TIME_WAIT the last one left.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


# ---- moto as the source of truth ------------------------------------------------------


class MotoIdentity:
    """An instance's Identity from moto's EC2 and IAM APIs, cached `ttl_s` seconds.

    `ec2` and `iam` are boto3 clients for moto; `ec2`'s region is the instance's.
    """

    def __init__(self, ec2: Any, iam: Any, instance_id: str, *,
                 ttl_s: float = IDENTITY_CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ec2 = ec2
        self._iam = iam
        self.instance_id = instance_id
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, Identity] | None = None

    def __call__(self) -> Identity:
        with self._lock:
            if self._cached is not None and self._clock() - self._cached[0] < self._ttl_s:
                return self._cached[1]
            ident = self.fetch()
            self._cached = (self._clock(), ident)
            return ident

    def fetch(self) -> Identity:
        reservation = self._ec2.describe_instances(
            InstanceIds=[self.instance_id])["Reservations"][0]
        inst = reservation["Instances"][0]
        options = inst.get("MetadataOptions") or {}
        profile_arn = (inst.get("IamInstanceProfile") or {}).get("Arn")
        role_arn, profile_id = self._profile(profile_arn) if profile_arn else (None, None)
        return Identity(
            instance_id=inst["InstanceId"],
            region=self._ec2.meta.region_name,
            availability_zone=inst["Placement"]["AvailabilityZone"],
            instance_type=inst["InstanceType"],
            private_ip=inst["PrivateIpAddress"],
            account_id=reservation.get("OwnerId") or _account_of(profile_arn),
            ami_id=inst["ImageId"],
            role_arn=role_arn,
            profile_arn=profile_arn,
            profile_id=profile_id,
            tokens_required=options.get("HttpTokens", "optional") == "required",
            hop_limit=int(options.get("HttpPutResponseHopLimit", 1)),
            endpoint_enabled=options.get("HttpEndpoint", "enabled") == "enabled",
            architecture=inst.get("Architecture") or _host_architecture(),
            launch_time=inst.get("LaunchTime"),
            private_dns_name=inst.get("PrivateDnsName") or None,
        )

    def _profile(self, profile_arn: str) -> tuple[str | None, str | None]:
        """(the profile's role ARN, the profile's id); a profile may hold no role."""
        name = profile_arn.rsplit("/", 1)[-1]  # ARNs carry the profile's path
        profile = self._iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        roles = profile.get("Roles") or []
        return (roles[0]["Arn"] if roles else None), profile.get("InstanceProfileId")


def _account_of(arn: str | None) -> str:
    # arn:aws:iam::123456789012:instance-profile/x; moto's default account otherwise.
    return arn.split(":")[4] if arn and arn.count(":") >= 5 else "123456789012"


class MotoCredentials:
    """The role's temporary credentials from moto STS, as EC2 gets them for a node.

    One STS AssumeRole per instance (session name: the instance id, as on EC2), reused
    until `refresh_before_s` before it expires (see REFRESH_BEFORE_S for why that is half
    its life, not minutes). One object serves every instance.
    """

    def __init__(self, sts: Any, *, duration_s: int = ROLE_SESSION_S,
                 refresh_before_s: float = REFRESH_BEFORE_S,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self._sts = sts
        self._duration_s = duration_s
        self._refresh_before = timedelta(seconds=refresh_before_s)
        self._now = now
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Credentials] = {}

    def __call__(self, identity: Identity) -> Credentials:
        if not identity.role_arn:
            raise LookupError(f"instance {identity.instance_id} has no role")
        key = (identity.instance_id, identity.role_arn)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and self._now() < cached.expiration - self._refresh_before:
                return cached
            creds = self._assume(identity.role_arn, identity.instance_id)
            self._cache[key] = creds
            return creds

    def forget(self, instance_id: str) -> None:
        """Drops a terminated instance's credentials."""
        with self._lock:
            for key in [k for k in self._cache if k[0] == instance_id]:
                del self._cache[key]

    def _assume(self, role_arn: str, instance_id: str) -> Credentials:
        issued = self._now()
        out = self._sts.assume_role(RoleArn=role_arn, RoleSessionName=instance_id,
                                    DurationSeconds=self._duration_s)["Credentials"]
        return Credentials(
            access_key_id=out["AccessKeyId"],
            secret_access_key=out["SecretAccessKey"],
            token=out["SessionToken"],
            expiration=out["Expiration"].astimezone(timezone.utc),
            last_updated=issued,
        )
