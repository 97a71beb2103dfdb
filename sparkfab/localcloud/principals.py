"""IAM decides in a booted local cloud: moto's authorization on, every caller a moto principal.

A booted cloud's watcher, once moto_server answers, creates two IAM users in it and then
turns moto's IAM authorization on (`POST /moto-api/reset-auth 0`), so from then on every
request is signature-checked and allowed only by its caller's policies, as on AWS:
- `sparkfab-local-admin` (every action): the watcher itself (EC2 polls, IMDS's STS calls)
  and the tests' own look at the cloud;
- `sparkfab-local-operator`: holds exactly the shipped operator policy
  (sparkfab/aws/operator-policy.json), and is whom `fab` signs as in this cloud;
- the nodes sign with their instance profile's STS credentials from IMDS (imds.py), so their
  role's policy is what allows or denies.

Their keys are moto's, valid for this cloud only: they live in `moto-credentials.json` in the
cloud's work directory (0600, root's), and go with the cloud. A cloud without that file (the
namespace test hosts) keeps moto's default of no authorization, and its callers sign with
MOTO_CREDENTIALS.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from sparkfab import private_json
from sparkfab.aws import operator_policy
from sparkfab.aws.iam import IAM_PATH
from sparkfab.localcloud.hosts import LOCAL_REGION, MOTO_CREDENTIALS

CREDENTIALS_FILE = "moto-credentials.json"
ADMIN = "sparkfab-local-admin"
OPERATOR = "sparkfab-local-operator"
_ADMIN_POLICY = {"Version": "2012-10-17",
                 "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def credentials(workdir: Path | str | None, who: str = ADMIN) -> dict[str, str]:
    """boto3 keyword arguments for `who` in the cloud at `workdir`; moto's dummies where that
    cloud has no IAM authorization (no credentials file)."""
    if workdir is None:
        return dict(MOTO_CREDENTIALS)
    path = Path(workdir) / CREDENTIALS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return dict(MOTO_CREDENTIALS)
    return {"aws_access_key_id": doc[who]["aws_access_key_id"],
            "aws_secret_access_key": doc[who]["aws_secret_access_key"]}


def enable(endpoint: str, workdir: Path, region: str = LOCAL_REGION) -> None:
    """Create the admin and the operator in moto, write their keys, turn authorization on.

    Must run before anything else uses the cloud: until the switch moto allows everything.
    """
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=region, **MOTO_CREDENTIALS)
    doc: dict[str, Any] = {}
    for user, policy in ((ADMIN, _ADMIN_POLICY), (OPERATOR, operator_policy.document())):
        iam.create_user(UserName=user, Path=IAM_PATH)
        iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        doc[user] = {"aws_access_key_id": key["AccessKeyId"],
                     "aws_secret_access_key": key["SecretAccessKey"]}
    private_json.write(workdir / CREDENTIALS_FILE, doc)
    # Not a form: moto reads the raw body, which Flask keeps only for other content types.
    request = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as reply:
        reply.read()


def forget(workdir: Path) -> None:
    """The keys die with the cloud's moto."""
    (workdir / CREDENTIALS_FILE).unlink(missing_ok=True)
