"""THE settings object: defaults < `sparkfab.yaml` < environment < task flags, validated.

- The file is `sparkfab.yaml` in the working directory, or the path in `SPARKFAB_CONFIG`
  (an explicitly named file must exist). `sparkfab.example.yaml` documents every key.
- Each key can be set from the environment as `SPARKFAB_<KEY>` (e.g. `SPARKFAB_WORKERS=4`,
  `SPARKFAB_SPOT=true`, `SPARKFAB_TAGS=team=data,project=x`); an empty value means "unset"
  for the keys that may be unset.
- Task flags win over everything.

No secret ever goes here: AWS credentials come from the standard AWS chain (environment,
`~/.aws`, SSO, instance role), and keys that look like credentials are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparkfab.aws.pricing import price_table
from sparkfab.errors import UserError
from sparkfab.regions import EU_REGIONS

CONFIG_FILE = "sparkfab.yaml"
CONFIG_ENV = "SPARKFAB_CONFIG"
ENV_PREFIX = "SPARKFAB_"
# Debian 13 (trixie), the default: Debian's public parameter (wiki.debian.org/Cloud/
# AmazonEC2Image). The local cloud boots the same distribution (localcloud/image.py).
DEBIAN_AMI_PARAMETER = "/aws/service/debian/release/13/latest/amd64"
DEBIAN_SSH_USER = "admin"
DEBIAN_PYTHON = "3.13"
# The documented alternative: set all three keys (ami_ssm_parameter, ssh_user, node_python).
UBUNTU_AMI_PARAMETER = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
)
UBUNTU_SSH_USER = "ubuntu"
UBUNTU_PYTHON = "3.12"
PYTHON_ENVS = ("venv", "conda")
SSH_ADDRESSES = ("public", "private")
# Tag keys sparkfab writes itself; user tags may not override them.
RESERVED_TAG_PREFIXES = ("aws:", "sparkfab:")
RESERVED_TAG_KEYS = ("created-by", "Name")
# operator_cidr: anything wider is refused unless allow_wide_operator_cidr says it is meant.
WIDEST_OPERATOR_PREFIX = 16
WIDEST_OPERATOR_PREFIX_V6 = 48
_SECRET_KEY = re.compile(r"secret|password|token|access_key|credential", re.IGNORECASE)


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    """Every knob of a cluster. Build it with `load_settings`, never by hand in tasks."""

    cluster: str = field(default="sparkfab", metadata=_doc(
        "cluster name: tags, resource names, inventory/<cluster>.json"))
    region: str = field(default="eu-west-1", metadata=_doc(
        "AWS region; EU only (GDPR); the bucket is created here too"))
    workers: int = field(default=2, metadata=_doc("number of Spark worker instances"))
    master_instance_type: str = field(default="m6i.large", metadata=_doc(
        "instance type of the master (may be smaller than the workers)"))
    worker_instance_type: str = field(default="m6i.xlarge", metadata=_doc(
        "instance type of each worker"))
    spot: bool = field(default=False, metadata=_doc(
        "run workers as one-time spot instances (the master stays on-demand)"))
    root_volume_gb: int = field(default=30, metadata=_doc(
        "size of each node's encrypted gp3 root volume, GiB"))
    ami: str | None = field(default=None, metadata=_doc(
        "AMI id; unset: the current Debian 13 image from ami_ssm_parameter"))
    ami_ssm_parameter: str = field(default=DEBIAN_AMI_PARAMETER, metadata=_doc(
        "public SSM parameter holding the default AMI id (Ubuntu 24.04 LTS: "
        f"{UBUNTU_AMI_PARAMETER}, with ssh_user ubuntu and node_python 3.12)"))
    ssh_user: str = field(default=DEBIAN_SSH_USER, metadata=_doc(
        "login user of the AMI (Debian: admin, Ubuntu: ubuntu)"))
    public_key_path: str = field(default="~/.ssh/id_ed25519.pub", metadata=_doc(
        "your SSH public key (ed25519 or RSA); the private key is this path without .pub"))
    operator_cidr: str | None = field(default=None, metadata=_doc(
        "the only network SSH is allowed from; unset: your public IP/32, looked up once"))
    allow_wide_operator_cidr: bool = field(default=False, metadata=_doc(
        f"allow an operator_cidr wider than /{WIDEST_OPERATOR_PREFIX} (IPv6: "
        f"/{WIDEST_OPERATOR_PREFIX_V6}); refused otherwise, as a likely mistake"))
    ssh_address: str = field(default="public", metadata=_doc(
        "which node address SSH uses: public, or private (VPN, bastion, local cloud)"))
    bucket: str | None = field(default=None, metadata=_doc(
        "S3 bucket for data and artifacts; unset: sparkfab-<cluster>-<account>-<region>; "
        "an existing bucket of yours is reused and never deleted"))
    bucket_versioning: bool = field(default=False, metadata=_doc(
        "turn on versioning when sparkfab creates the bucket"))
    idle_timeout_minutes: int = field(default=60, metadata=_doc(
        "the cluster shuts down (instances terminate) after this long with no Spark "
        "application running; 0 installs no idle guard"))
    max_lifetime_hours: int = field(default=8, metadata=_doc(
        "every node shuts down (and terminates) this long after boot, busy or not; "
        "workers also stop soon after their master is gone"))
    tags: dict[str, str] = field(default_factory=dict, metadata=_doc(
        "extra tags for every resource (env: k=v,k2=v2)"))
    aws_profile: str | None = field(default=None, metadata=_doc(
        "AWS profile name (e.g. an SSO profile); unset: the standard AWS chain"))
    endpoint_url: str | None = field(default=None, metadata=_doc(
        "AWS endpoint override; unset on AWS, the moto_server URL in the local cloud"))
    vpc_id: str | None = field(default=None, metadata=_doc(
        "VPC to use; unset: the default VPC (or the VPC of subnet_id)"))
    subnet_id: str | None = field(default=None, metadata=_doc(
        "subnet to launch into; unset: AWS picks one of the VPC's default subnets"))
    python_env: str = field(default="venv", metadata=_doc(
        "Python environment on the nodes: venv or conda"))
    node_python: str = field(default=DEBIAN_PYTHON, metadata=_doc(
        "the nodes' Python (major.minor) the job's wheels are staged for; 3.13 is the python3 "
        "of Debian 13, the default AMI (Ubuntu 24.04: 3.12; with python_env: conda, the "
        "Python conda installs)"))
    artifact_source: str = field(default="bucket", metadata=_doc(
        "where nodes download Spark/jars/wheels: 'bucket' (staged into the cluster "
        "bucket) or a mirror base URL"))
    local_cloud: str | None = field(default=None, metadata=_doc(
        "set only by `fab local-cloud-up`: the local cloud's directory; sparkfab then "
        "signs its calls to moto as the cloud's operator (moto's keys), takes the nodes' "
        "host keys from the cloud's records and never powers a node off"))

    @property
    def public_key_file(self) -> Path:
        return Path(self.public_key_path).expanduser()

    @property
    def private_key_path(self) -> Path:
        """The operator's private key: the public key's path without `.pub`."""
        pub = self.public_key_file
        return pub.with_suffix("") if pub.suffix == ".pub" else pub.with_name(pub.name + ".key")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES: dict[str, Any] = typing.get_type_hints(Settings)


def key_doc(key: str) -> str:
    return FIELDS[key].metadata["doc"]


# ---- parsing -----------------------------------------------------------------------------

def _optional(tp: Any) -> tuple[bool, Any]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return True, args[0]
    return False, tp


def _coerce(key: str, value: Any, source: str) -> Any:
    """Turn a value from YAML, the environment or a flag into the key's type."""
    optional, tp = _optional(_TYPES[key])
    if value is None or (isinstance(value, str) and value.strip() == "" and optional):
        if optional:
            return None
        raise UserError(f"{key} must be set ({source})", hint=key_doc(key))
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            return int(str(value).strip(), 10)
        if typing.get_origin(tp) is dict:
            if isinstance(value, Mapping):
                return {str(k): str(v) for k, v in value.items()}
            pairs = [p for p in str(value).split(",") if p.strip()]
            out: dict[str, str] = {}
            for pair in pairs:
                k, sep, v = pair.partition("=")
                if not sep or not k.strip():
                    raise ValueError
                out[k.strip()] = v.strip()
            return out
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value).strip()
    except ValueError:
        kind = {bool: "true or false", int: "a whole number"}.get(
            tp, "a mapping (k=v,k2=v2)" if typing.get_origin(tp) is dict else "a string")
        raise UserError(
            f"{key}={value!r} ({source}) is not {kind}", hint=key_doc(key)
        ) from None


def _unknown_key(key: str, source: str) -> UserError:
    if _SECRET_KEY.search(key):
        return UserError(
            f"{key!r} in {source}: credentials never go in sparkfab's settings",
            hint="use the standard AWS chain: `aws configure sso` / AWS_PROFILE "
            "(or set aws_profile), environment variables, or an instance role",
        )
    close = difflib.get_close_matches(key, FIELDS, n=1)
    return UserError(
        f"unknown setting {key!r} in {source}",
        hint=f"did you mean {close[0]!r}?" if close else "see sparkfab.example.yaml for every key",
    )


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where} is not valid YAML",
                        hint="compare with sparkfab.example.yaml") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}",
                        hint=f"check the path (or unset {CONFIG_ENV})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of key: value",
                        hint="compare with sparkfab.example.yaml")
    return data


def config_path(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file to read, and whether the user named it (then it must exist)."""
    named = env.get(CONFIG_ENV, "").strip()
    return (Path(named).expanduser(), True) if named else (Path(CONFIG_FILE), False)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    path: str | Path | None = None,
) -> Settings:
    """Settings from defaults < config file < environment < flags (None flags ignored)."""
    env = os.environ if env is None else env
    if path is not None:
        file, must_exist = Path(path).expanduser(), True
    else:
        file, must_exist = config_path(env)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    if file.exists():
        for key, value in read_config_file(file).items():
            key = str(key)
            if key not in FIELDS:
                raise _unknown_key(key, str(file))
            values[key] = _coerce(key, value, str(file))
            sources[key] = str(file)
    elif must_exist:
        raise UserError(f"config file {file} does not exist",
                        hint=f"create it from sparkfab.example.yaml, or unset {CONFIG_ENV}")

    for key in FIELDS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key] = _coerce(key, env[name], name)
            sources[key] = name

    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in FIELDS:
            raise _unknown_key(key, "flags")
        values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
        sources[key] = f"--{key.replace('_', '-')}"

    settings = Settings(**values)
    problems = validate(settings)
    if problems:
        hint = problems[0][2]
        message = "; ".join(
            f"{msg} (from {sources.get(key, 'the default')})" for key, msg, _ in problems
        )
        raise UserError(f"invalid settings: {message}", hint=hint)
    return _normalized(settings)


# ---- validation --------------------------------------------------------------------------

_CLUSTER = re.compile(r"^[a-z](?:[a-z0-9-]{0,26}[a-z0-9])?$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_VPC = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
MAX_WORKERS = 100
MAX_LIFETIME_HOURS = 24 * 7
MAX_IDLE_MINUTES = 24 * 60


def _plain_http(url: str) -> bool:
    """Unencrypted: fine only in the local cloud, whose moto and mirror sit on this
    machine's private bridge (`local_cloud` set by `fab local-cloud-up`)."""
    return url.lower().startswith("http://")


def _cidr(text: str) -> str:
    net = ipaddress.ip_network(text, strict=False)
    return str(net)


def validate(s: Settings) -> list[tuple[str, str, str]]:
    """Every problem as (key, message, hint); empty when the settings are usable."""
    out: list[tuple[str, str, str]] = []

    def bad(key: str, message: str, hint: str) -> None:
        out.append((key, message, hint))

    if not _CLUSTER.match(s.cluster):
        bad("cluster", f"cluster {s.cluster!r} is not a valid name",
            "1-28 characters: lowercase letters, digits and '-', starting with a letter "
            "(it becomes part of bucket, IAM and tag names)")
    if s.region not in EU_REGIONS:
        bad("region", f"region {s.region!r} is not an EU region (GDPR)",
            "use one of: " + ", ".join(EU_REGIONS))
    if not 1 <= s.workers <= MAX_WORKERS:
        bad("workers", f"workers={s.workers} is out of range", f"use 1 to {MAX_WORKERS}")
    if s.region in EU_REGIONS:
        known = price_table().types_in(s.region)
        for key in ("master_instance_type", "worker_instance_type"):
            value = getattr(s, key)
            if value not in known:
                bad(key, f"{key} {value!r} is not a type sparkfab knows in {s.region}",
                    "use one of: " + ", ".join(known))
    if not 8 <= s.root_volume_gb <= 16384:
        bad("root_volume_gb", f"root_volume_gb={s.root_volume_gb} is out of range",
            "use 8 to 16384 GiB (the Debian and Ubuntu images need at least 8)")
    if s.ami is not None and not _AMI.match(s.ami):
        bad("ami", f"ami {s.ami!r} is not an AMI id", "an id looks like ami-0123456789abcdef0")
    if not s.ami_ssm_parameter.startswith("/"):
        bad("ami_ssm_parameter", f"ami_ssm_parameter {s.ami_ssm_parameter!r} is not a "
            "parameter path", f"the default is {DEBIAN_AMI_PARAMETER}")
    if not _USER.match(s.ssh_user):
        bad("ssh_user", f"ssh_user {s.ssh_user!r} is not a Linux user name",
            "Debian's images use 'admin', Ubuntu's 'ubuntu'")
    if not s.public_key_path.strip():
        bad("public_key_path", "public_key_path is empty", "point it at your .pub key")
    if s.operator_cidr is not None:
        try:
            net = ipaddress.ip_network(s.operator_cidr, strict=False)
        except ValueError:
            bad("operator_cidr", f"operator_cidr {s.operator_cidr!r} is not an IP network",
                "e.g. 203.0.113.7/32 (your address) or your office's range")
        else:
            widest = (WIDEST_OPERATOR_PREFIX if net.version == 4
                      else WIDEST_OPERATOR_PREFIX_V6)
            if net.prefixlen == 0:
                bad("operator_cidr", f"operator_cidr {s.operator_cidr} opens SSH to the "
                    "whole internet", "give your own address as /32, or your VPN's range")
            elif net.prefixlen < widest and not s.allow_wide_operator_cidr:
                bad("operator_cidr", f"operator_cidr {s.operator_cidr} is wider than "
                    f"/{widest}: SSH would be open to {net.num_addresses:,} addresses",
                    "give your own address as /32 or your VPN's range; if this range is "
                    "meant, add --allow-wide-operator-cidr (allow_wide_operator_cidr: true)")
    if s.ssh_address not in SSH_ADDRESSES:
        bad("ssh_address", f"ssh_address {s.ssh_address!r} is not one of "
            f"{', '.join(SSH_ADDRESSES)}", "public (default) or private (VPN/bastion)")
    if s.bucket is not None and not _BUCKET.match(s.bucket):
        bad("bucket", f"bucket {s.bucket!r} is not a usable S3 bucket name",
            "3-63 characters: lowercase letters, digits and '-' (no dots: they break "
            "HTTPS to s3a)")
    if not (s.idle_timeout_minutes == 0 or 10 <= s.idle_timeout_minutes <= MAX_IDLE_MINUTES):
        bad("idle_timeout_minutes", f"idle_timeout_minutes={s.idle_timeout_minutes} is out "
            "of range", f"0 (off) or 10 to {MAX_IDLE_MINUTES}")
    if not 1 <= s.max_lifetime_hours <= MAX_LIFETIME_HOURS:
        bad("max_lifetime_hours", f"max_lifetime_hours={s.max_lifetime_hours} is out of "
            "range", f"1 to {MAX_LIFETIME_HOURS}: a forgotten cluster must not bill forever")
    if len(s.tags) > 40:
        bad("tags", f"{len(s.tags)} tags is too many", "AWS allows 50 per resource; "
            "sparkfab needs a few")
    for key, value in s.tags.items():
        if key.startswith(RESERVED_TAG_PREFIXES) or key in RESERVED_TAG_KEYS:
            bad("tags", f"tag {key!r} is reserved", "sparkfab sets it itself; rename it")
        elif not 1 <= len(key) <= 128 or len(value) > 256:
            bad("tags", f"tag {key!r} is too long", "keys up to 128, values up to 256 chars")
    if s.endpoint_url is not None and not _URL.match(s.endpoint_url):
        bad("endpoint_url", f"endpoint_url {s.endpoint_url!r} is not an http(s) URL",
            "leave it unset on AWS")
    elif s.endpoint_url is not None and _plain_http(s.endpoint_url) and s.local_cloud is None:
        bad("endpoint_url", f"endpoint_url {s.endpoint_url} is plain http: requests and "
            "presigned URLs would cross the network unencrypted",
            "use an https:// endpoint (plain http only in the local cloud), or leave it "
            "unset on AWS")
    if s.vpc_id is not None and not _VPC.match(s.vpc_id):
        bad("vpc_id", f"vpc_id {s.vpc_id!r} is not a VPC id", "e.g. vpc-0123456789abcdef0")
    if s.subnet_id is not None and not _SUBNET.match(s.subnet_id):
        bad("subnet_id", f"subnet_id {s.subnet_id!r} is not a subnet id",
            "e.g. subnet-0123456789abcdef0")
    if not re.match(r"^3\.\d{1,2}$", s.node_python):
        bad("node_python", f"node_python {s.node_python!r} is not a Python version like 3.12",
            "the python3 version of the nodes' image (Debian 13: 3.13, Ubuntu 24.04: 3.12)")
    if s.python_env not in PYTHON_ENVS:
        bad("python_env", f"python_env {s.python_env!r} is not one of {', '.join(PYTHON_ENVS)}",
            "venv (default) or conda")
    if s.artifact_source != "bucket" and not _URL.match(s.artifact_source):
        bad("artifact_source", f"artifact_source {s.artifact_source!r} is neither 'bucket' "
            "nor an http(s) URL", "'bucket' stages artifacts into the cluster bucket")
    elif _plain_http(s.artifact_source) and s.local_cloud is None:
        bad("artifact_source", f"artifact_source {s.artifact_source} is plain http: the "
            "mirror's manifest (the checksums the nodes trust) would be readable and "
            "changeable on the way", "serve the mirror over https://, or use 'bucket'")
    if s.local_cloud is not None and s.endpoint_url is None:
        bad("local_cloud", "local_cloud is set but endpoint_url is not",
            "use the settings file `fab local-cloud-up` writes, unchanged")
    return out


def _normalized(s: Settings) -> Settings:
    if s.operator_cidr is not None:
        s = s.replace(operator_cidr=_cidr(s.operator_cidr))
    return s
