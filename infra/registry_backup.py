"""Back up and restore the MLflow registry of the team servers: a ``pg_dump`` of the MLflow database plus every
object of the artifact bucket, taken together so run records and artifacts match.

    python infra/registry_backup.py backup DIR     # make registry-backup  [BACKUP_DIR=...]
    python infra/registry_backup.py restore DIR    # make registry-restore BACKUP_DIR=... (into an empty database)

Reads the MLflow server's own settings (the environment of the ``mlflow`` service in infra/compose.yaml):
``MLFLOW_BACKEND_STORE_URI`` (a ``postgresql[+driver]`` URL with user, password, host, port and database),
``MLFLOW_ARTIFACTS_DESTINATION`` (``s3://bucket/[prefix]``), ``MLFLOW_S3_ENDPOINT_URL`` and
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``. A restore writes into the database and bucket these name, so
pointing them at a fresh database and bucket restores a copy.
Needs ``pg_dump``/``pg_restore`` (Debian's postgresql-client) and boto3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

DUMP, OBJECTS, MANIFEST = "mlflow.dump", "artifacts", "manifest.json"


class BackupError(Exception):
    """A backup or restore that cannot go on; the message names what and why."""


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise BackupError(f"{name} is not set (the MLflow server's setting; see infra/README.md, Backups)")
    return value


def database() -> tuple[dict[str, str], str]:
    """libpq connection variables (the password stays out of the command line) and a printable name."""
    url = urlsplit(_required("MLFLOW_BACKEND_STORE_URI"))
    if not url.scheme.startswith("postgresql"):
        raise BackupError(f"MLFLOW_BACKEND_STORE_URI is {url.scheme}://...: only a PostgreSQL store is backed up here")
    env = {
        "PGHOST": url.hostname or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "PGUSER": unquote(url.username or ""),
        "PGPASSWORD": unquote(url.password or ""),
        "PGDATABASE": url.path.lstrip("/"),
    }
    return env, f"{env['PGUSER']}@{env['PGHOST']}:{env['PGPORT']}/{env['PGDATABASE']}"


def bucket():
    """(boto3 S3 client, bucket, key prefix) of ``MLFLOW_ARTIFACTS_DESTINATION``."""
    import boto3

    dest = urlsplit(_required("MLFLOW_ARTIFACTS_DESTINATION"))
    if dest.scheme != "s3":
        raise BackupError(
            f"MLFLOW_ARTIFACTS_DESTINATION is {dest.geturl()}: only an s3:// destination is backed up here"
        )
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    client = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    prefix = dest.path.lstrip("/")
    return client, dest.netloc, prefix + "/" if prefix and not prefix.endswith("/") else prefix


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    tool = shutil.which(cmd[0])
    if tool is None:
        raise BackupError(f"{cmd[0]} not found (apt-get install postgresql-client)")
    done = subprocess.run([tool, *cmd[1:]], env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{what}: {cmd[0]} exited {done.returncode}: {done.stderr.strip()[-2000:]}")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def backup(out: Path) -> dict:
    """Dump the database and download every object of the bucket into ``out`` (which must not exist yet)."""
    if out.exists():
        raise BackupError(f"{out}: already exists (a backup never overwrites another)")
    pg, db_name = database()
    s3, name, prefix = bucket()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / OBJECTS).mkdir(parents=True)
    # the dump first: objects written after it are then at worst unreferenced, never missing from a record
    _run(["pg_dump", "-Fc", "--no-owner", "--no-privileges", "-f", str(tmp / DUMP)], pg, f"dump of {db_name}")
    count = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = tmp / OBJECTS / obj["Key"][len(prefix) :]
            if not target.resolve().is_relative_to((tmp / OBJECTS).resolve()):
                raise BackupError(f"s3://{name}/{obj['Key']}: key leaves the backup folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(name, obj["Key"], str(target))
            count, size = count + 1, size + obj["Size"]
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "database": db_name,
        "artifacts": f"s3://{name}/{prefix}",
        "objects": count,
        "bytes": size,
        "dump_md5": _md5(tmp / DUMP),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.rename(out)  # a backup folder is complete or absent
    return manifest


def restore(src: Path) -> dict:
    """Restore the dump into the (empty) database and upload the objects into the bucket the environment names."""
    manifest_file = src / MANIFEST
    if not manifest_file.is_file():
        raise BackupError(f"{manifest_file}: no manifest (not a finished backup folder)")
    manifest = json.loads(manifest_file.read_text())
    if _md5(src / DUMP) != manifest["dump_md5"]:
        raise BackupError(f"{src / DUMP}: checksum differs from the manifest (damaged backup)")
    files = sorted(p for p in (src / OBJECTS).rglob("*") if p.is_file())
    if len(files) != manifest["objects"]:
        raise BackupError(f"{src / OBJECTS}: {len(files)} files, the manifest says {manifest['objects']}")
    pg, db_name = database()
    s3, name, prefix = bucket()
    import psycopg2

    with (
        psycopg2.connect(
            host=pg["PGHOST"],
            port=pg["PGPORT"],
            user=pg["PGUSER"],
            password=pg["PGPASSWORD"],
            dbname=pg["PGDATABASE"],
            connect_timeout=10,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("select count(*) from information_schema.tables where table_schema = 'public'")
        if cur.fetchone()[0]:
            raise BackupError(
                f"{db_name}: database is not empty (restore into a fresh one: createdb, or drop it first)"
            )
    conn.close()
    _run(
        ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "-d", pg["PGDATABASE"], str(src / DUMP)],
        pg,
        f"restore into {db_name}",
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if name not in existing:
        s3.create_bucket(Bucket=name)
    for file in files:
        s3.upload_file(str(file), name, prefix + file.relative_to(src / OBJECTS).as_posix())
    return {**manifest, "restored_into": db_name, "restored_artifacts": f"s3://{name}/{prefix}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["backup", "restore"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        result = backup(args.folder) if args.action == "backup" else restore(args.folder)
    except BackupError as exc:
        print(f"registry {args.action} failed: {exc}", file=sys.stderr)
        return 1
    if args.action == "backup":
        print(
            f"registry backup {args.folder}: database {result['database']}, {result['objects']} objects "
            f"({result['bytes']} bytes) from {result['artifacts']}"
        )
    else:
        print(
            f"registry restored from {args.folder} into {result['restored_into']}, {result['objects']} objects "
            f"into {result['restored_artifacts']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
