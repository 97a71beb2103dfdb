"""Settings: each layer overrides the one below, and bad input gets one clear line + hint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sparkfab.config import FIELDS, Settings, load_settings
from sparkfab.errors import UserError
from sparkfab.regions import EU_REGIONS

EXAMPLE = Path(__file__).resolve().parents[2] / "sparkfab.example.yaml"


def _write(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no sparkfab.yaml of the developer's leaks in


def test_defaults_file_env_flags_each_override_the_layer_below(tmp_path: Path) -> None:
    _write(tmp_path / "sparkfab.yaml", {"workers": 3, "region": "eu-central-1",
                                        "cluster": "from-file"})
    env = {"SPARKFAB_WORKERS": "5", "SPARKFAB_REGION": "eu-north-1"}
    s = load_settings({"workers": "7", "region": None}, env=env)
    assert s.workers == 7  # flag beats env beats file
    assert s.region == "eu-north-1"  # env beats file; a None flag is "not given"
    assert s.cluster == "from-file"  # file beats default
    assert s.ssh_user == Settings().ssh_user == "admin"  # default: Debian's


def test_sparkfab_config_names_another_file_which_must_exist(tmp_path: Path) -> None:
    other = _write(tmp_path / "other.yaml", {"cluster": "elsewhere"})
    assert load_settings(env={"SPARKFAB_CONFIG": str(other)}).cluster == "elsewhere"
    with pytest.raises(UserError, match="does not exist"):
        load_settings(env={"SPARKFAB_CONFIG": str(tmp_path / "missing.yaml")})


def test_environment_values_are_parsed_by_type() -> None:
    s = load_settings(env={"SPARKFAB_SPOT": "yes", "SPARKFAB_ROOT_VOLUME_GB": "64",
                           "SPARKFAB_TAGS": "team=data, cost-center=42",
                           "SPARKFAB_AMI": ""})
    assert s.spot is True and s.root_volume_gb == 64 and s.ami is None
    assert s.tags == {"team": "data", "cost-center": "42"}
    with pytest.raises(UserError) as err:
        load_settings(env={"SPARKFAB_WORKERS": "many"})
    assert "SPARKFAB_WORKERS" in err.value.message and "whole number" in err.value.message


def test_a_non_eu_region_is_refused_naming_where_it_came_from() -> None:
    with pytest.raises(UserError) as err:
        load_settings(env={"SPARKFAB_REGION": "us-east-1"})
    assert "us-east-1" in err.value.message and "SPARKFAB_REGION" in err.value.message
    assert all(r in err.value.hint for r in EU_REGIONS)


@pytest.mark.parametrize(("flags", "words"), [
    ({"worker_instance_type": "p5.48xlarge"}, "not a type sparkfab knows"),
    ({"workers": 0}, "workers=0"),
    ({"cluster": "Bad_Name"}, "not a valid name"),
    ({"operator_cidr": "0.0.0.0/0"}, "whole internet"),
    ({"operator_cidr": "not-an-ip"}, "not an IP network"),
    ({"ssh_address": "both"}, "ssh_address"),
    ({"bucket": "My.Bucket"}, "not a usable S3 bucket name"),
    ({"max_lifetime_hours": 0}, "max_lifetime_hours"),
    ({"tags": {"sparkfab:cluster": "x"}}, "reserved"),
    ({"python_env": "pipenv"}, "python_env"),
    ({"node_python": "python3"}, "not a Python version"),
    ({"artifact_source": "ftp://x"}, "artifact_source"),
    ({"ami": "ubuntu"}, "not an AMI id"),
])
def test_bad_values_get_one_line_and_a_hint(flags: dict[str, object], words: str) -> None:
    with pytest.raises(UserError) as err:
        load_settings(flags, env={})
    assert words in err.value.message and err.value.hint
    assert "\n" not in err.value.message


def test_unknown_keys_get_a_suggestion_and_credentials_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "sparkfab.yaml", {"worker": 3})
    with pytest.raises(UserError) as err:
        load_settings(env={})
    assert "'worker'" in err.value.message and "workers" in err.value.hint
    _write(tmp_path / "sparkfab.yaml", {"aws_secret_access_key": "x"})
    with pytest.raises(UserError) as err:
        load_settings(env={})
    assert "credentials never go" in err.value.message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "sparkfab.yaml").write_text("cluster: a\nworkers: [\n")
    with pytest.raises(UserError, match="line"):
        load_settings(env={})


def test_operator_address_is_normalised_and_keys_derive_the_private_path() -> None:
    s = load_settings({"operator_cidr": "203.0.113.7",
                       "public_key_path": "/home/me/.ssh/id_ed25519.pub"}, env={})
    assert s.operator_cidr == "203.0.113.7/32"
    assert s.private_key_path == Path("/home/me/.ssh/id_ed25519")


def test_the_example_file_documents_every_key_and_loads() -> None:
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)
    assert set(data) == set(FIELDS)
    for key in FIELDS:  # each key has a comment right above it
        assert f"\n{key}:" in text
        before = text.split(f"\n{key}:")[0].rstrip().splitlines()[-1]
        assert before.startswith("# "), key
    s = load_settings(env={"SPARKFAB_CONFIG": str(EXAMPLE)})
    defaults = Settings()
    differing = {f.name for f in dataclasses.fields(Settings)
                 if getattr(s, f.name) != getattr(defaults, f.name)}
    assert differing == {"tags"}  # the example shows tags; every other value is the default


def test_an_operator_network_wider_than_a_16_is_refused_unless_meant() -> None:
    with pytest.raises(UserError) as err:
        load_settings({"operator_cidr": "10.0.0.0/8"}, env={})
    assert "10.0.0.0/8" in err.value.message and "\n" not in err.value.message
    assert "--allow-wide-operator-cidr" in err.value.hint
    assert load_settings({"operator_cidr": "10.0.0.0/8", "allow_wide_operator_cidr": True},
                         env={}).operator_cidr == "10.0.0.0/8"
    assert load_settings({"operator_cidr": "10.1.0.0/16"}, env={}).operator_cidr == "10.1.0.0/16"
    # The whole internet stays refused, meant or not.
    with pytest.raises(UserError, match="whole internet"):
        load_settings({"operator_cidr": "0.0.0.0/0", "allow_wide_operator_cidr": True}, env={})


@pytest.mark.parametrize("key", ["endpoint_url", "artifact_source"])
def test_plain_http_is_refused_outside_the_local_cloud(key: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_settings({key: "http://mirror.example.com/sparkfab"}, env={})
    assert key in err.value.message and "https://" in err.value.hint
    assert "\n" not in err.value.message
    https = load_settings({key: "https://mirror.example.com/sparkfab"}, env={})
    assert getattr(https, key) == "https://mirror.example.com/sparkfab"
    # The local cloud's moto_server and mirror live on this machine's private bridge.
    local = {"endpoint_url": "http://10.77.0.1:5000", "local_cloud": str(tmp_path),
             key: "http://10.77.0.1:5000/mirror"}
    assert getattr(load_settings(local, env={}), key) == "http://10.77.0.1:5000/mirror"


def test_debian_13_is_the_default_and_ubuntu_24_04_the_documented_alternative() -> None:
    from sparkfab import config

    s = Settings()
    assert (s.ami_ssm_parameter, s.ssh_user, s.node_python) == (
        "/aws/service/debian/release/13/latest/amd64", "admin", "3.13")
    ubuntu = load_settings({"ami_ssm_parameter": config.UBUNTU_AMI_PARAMETER,
                            "ssh_user": config.UBUNTU_SSH_USER,
                            "node_python": config.UBUNTU_PYTHON}, env={})
    assert ubuntu.ssh_user == "ubuntu" and ubuntu.node_python == "3.12"
    assert config.UBUNTU_AMI_PARAMETER in EXAMPLE.read_text()
