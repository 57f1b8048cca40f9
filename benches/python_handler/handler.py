"""The deployer Lambda's work in Python 3.11 + boto3, for the cold-start/RSS comparison.

Same calls, same order as the Rust handler: read the deploy record, HeadObject(versionId),
check metadata, stream GetObject(versionId) once through SHA-256 + gunzip (every member) +
tar checks,
DescribeInstances by tags, SendCommand with the rendered header + host script (where the
version is, no presigned URL: hosts download with their own role),
write the deploy record with a conditional PutObject. Clients are created at import time,
as a production Python Lambda would.
"""

import gzip
import hashlib
import json
import os
import shlex
import tarfile
import time
import urllib.parse

import boto3
from botocore.config import Config as BotoConfig

_cfg = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"})
S3 = boto3.client("s3", config=_cfg)
EC2 = boto3.client("ec2", config=_cfg)
SSM = boto3.client("ssm", config=_cfg)

ALLOWED = [b.strip() for b in os.environ["DROPSHIP_ALLOWED_BUCKETS"].split(",") if b.strip()]
HOST_SCRIPT = open(os.environ["DROPSHIP_HOST_SCRIPT"], encoding="utf-8").read()


class _Hashing:
    """File-like wrapper hashing every byte read from the S3 body."""

    def __init__(self, body):
        self.body, self.sha, self.count = body, hashlib.sha256(), 0

    def read(self, n=-1):
        chunk = self.body.read(n if n and n > 0 else 1 << 20)
        self.sha.update(chunk)
        self.count += len(chunk)
        return chunk


def _check_entry(info, symlinks):
    name = info.name
    if name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"entry {name!r}: unsafe path")
    if not (info.isfile() or info.isdir() or info.issym()):
        raise ValueError(f"entry {name!r}: type not allowed")
    if info.mode & 0o7000:
        raise ValueError(f"entry {name!r}: setuid/setgid")
    if any(name.startswith(s + "/") for s in symlinks):
        raise ValueError(f"entry {name!r}: beneath a symlink")
    if info.issym():
        if info.linkname.startswith("/"):
            raise ValueError(f"entry {name!r}: absolute symlink")
        symlinks.add(name)


def handler(event, _context):
    detail = event["detail"]
    bucket = detail["bucket"]["name"]
    key = urllib.parse.unquote_plus(detail["object"]["key"])
    version = detail["object"]["version-id"]
    if bucket not in ALLOWED or not key.startswith("releases/") or not key.endswith(".tar.gz"):
        return {"outcome": "ignored"}
    app, env = key[len("releases/"):-len(".tar.gz")].split("/")
    record_key = f"deploy-records/{app}/{env}/py-{version}.json"
    try:
        S3.get_object(Bucket=bucket, Key=record_key)
        return {"outcome": "skipped_duplicate"}
    except S3.exceptions.NoSuchKey:
        pass
    head = S3.head_object(Bucket=bucket, Key=key, VersionId=version)
    meta = head["Metadata"]
    if meta.get("app") != app or meta.get("env") != env or len(meta.get("sha256", "")) != 64:
        return {"outcome": "rejected"}
    body = S3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"]
    hashing = _Hashing(body)
    symlinks, first, entries = set(), None, 0
    # gzip.GzipFile reads every member (bundles have one per block); tarfile's "r|gz" stops
    # after the first.
    with gzip.GzipFile(fileobj=hashing, mode="rb") as unzipped, tarfile.open(
        fileobj=unzipped, mode="r|"
    ) as archive:
        for info in archive:
            _check_entry(info, symlinks)
            if first is None:
                first = info.name
                manifest = json.load(archive.extractfile(info))
                if manifest["app"] != app or manifest["commit"] != meta["commit"]:
                    return {"outcome": "rejected"}
            entries += 1
    while hashing.read(1 << 20):
        pass
    if first != ".dropship/manifest.json" or hashing.sha.hexdigest() != meta["sha256"]:
        return {"outcome": "rejected"}
    reservations = EC2.describe_instances(Filters=[
        {"Name": "tag:dropship:app", "Values": [app]},
        {"Name": "tag:dropship:env", "Values": [env]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ])["Reservations"]
    targets = sorted(i["InstanceId"] for r in reservations for i in r["Instances"])
    if not targets:
        return {"outcome": "no_targets"}
    region = os.environ["AWS_REGION"]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or f"https://s3.{region}.amazonaws.com"
    inputs = {"DROPSHIP_ACTION": "deploy", "DROPSHIP_APP": app, "DROPSHIP_ENV": env, "DROPSHIP_BUCKET": bucket,
              "DROPSHIP_KEY": key, "DROPSHIP_VERSION_ID": version, "DROPSHIP_SHA256": meta["sha256"],
              "DROPSHIP_REGION": region, "DROPSHIP_S3_ENDPOINT": endpoint.rstrip("/"),
              "DROPSHIP_COMMIT": meta["commit"]}
    header = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in inputs.items())
    command_ids = []
    for i in range(0, len(targets), 50):
        out = SSM.send_command(InstanceIds=targets[i:i + 50], DocumentName="AWS-RunShellScript",
                               Parameters={"commands": [header + HOST_SCRIPT], "executionTimeout": ["1800"]},
                               TimeoutSeconds=600, MaxConcurrency="50%", MaxErrors="0",
                               Comment=f"dropship-py {app}/{env} v={version}"[:100])
        command_ids.append(out["Command"]["CommandId"])
    record = {"outcome": "dispatched", "version_id": version, "targets": targets, "command_ids": command_ids,
              "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    S3.put_object(Bucket=bucket, Key=record_key, Body=json.dumps(record).encode(), IfNoneMatch="*")
    return record
