"""The team stack of infra/compose.yaml, really running on 127.0.0.1: PostgreSQL, an S3 endpoint, the MLflow server
on PostgreSQL with S3 artifacts and the Prefect server on PostgreSQL; clients switch over with the env contract.

PostgreSQL 15 is a throwaway cluster started by ``infra/postgres/local.sh`` (the command infra/README.md gives for
a host without Docker; ``.ci/run`` installs Debian's postgresql when missing). The MLflow and Prefect servers get
the command and environment of their services in ``infra/compose.yaml`` (interpolated with ``infra/.env.example``
and test secrets), only with the in-network names (``postgres:5432``, ``minio:9000``) and ports turned into this
machine's loopback ones. moto's server stands in for MinIO (both speak the S3 API botocore, DVC and MLflow use).
Client processes get a minimal environment plus exactly the variables of ``infra/team.env.example``.

Checked here: the databases start empty and are migrated by the servers; Prefect flows and MLflow runs land on
the servers; two clients in their own work trees train, log and promote at the same time while a third predicts
with the champion; ``make registry-backup`` / ``registry-restore`` round-trip the registry into a fresh database
and bucket; DVC's S3 remote from the environment alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

S3_KEY, S3_SECRET = "medrov-service", "test-only-secret"
PG_PASSWORD = "test-only-db-password"
BIN = Path(sys.executable).parent
PG_BINDIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition("=")
            pairs[key] = value
    return pairs


def http_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class Server:
    """A server process in its own session, stopped (with its children) by process group at teardown."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], health: str, logs: Path):
        self.name, self.health = name, health
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=logs, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_healthy(self, timeout: float = 120) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.health, timeout=2):
                    return time.monotonic() - start
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(
            f"{self.name} not healthy at {self.health} after {timeout} s:\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def base_env(home: Path) -> dict[str, str]:
    """What any process needs to run at all, and nothing that points a tool somewhere."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}
    home.mkdir(parents=True, exist_ok=True)
    return env


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, started and stopped with infra/postgres/local.sh."""

    def __init__(self, env: dict[str, str]):
        # outside pytest's private tmp: as root the server runs as `postgres`, which must reach its folder
        self.dir = Path(tempfile.mkdtemp(prefix="medrov-pg-"))
        self.port = free_port()
        self.env = {**env, "PGPORT": str(self.port), "POSTGRES_USER": "medrov", "POSTGRES_PASSWORD": PG_PASSWORD}

    def script(self, action: str) -> str:
        done = subprocess.run(
            ["sh", str(ROOT / "infra" / "postgres" / "local.sh"), action, str(self.dir)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"local.sh {action}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def url(self, db: str, driver: str = "") -> str:
        return f"postgresql{driver}://medrov:{PG_PASSWORD}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str):
        import psycopg2

        return psycopg2.connect(self.url(db))

    def query(self, db: str, sql: str) -> list[tuple]:
        with self.connect(db) as conn, conn.cursor() as cur:
            cur.execute(sql)
            rows = cur.fetchall() if cur.description else []
        conn.close()
        return rows

    def create_database(self, db: str) -> None:
        conn = self.connect("postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db}" OWNER medrov')
        conn.close()


def compose_services(settings: dict[str, str]) -> dict:
    """infra/compose.yaml's services as Compose would see them with ``settings`` as infra/.env."""
    from tests.infra.test_infra import interpolate

    return yaml.safe_load(interpolate((ROOT / "infra" / "compose.yaml").read_text(), settings))["services"]


def on_loopback(service: dict, ports: dict[str, int], urls: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A compose service's command and environment with this machine's ports for the in-network names."""
    env = {}
    for key, value in service["environment"].items():
        value = str(value).replace("@postgres:5432/", f"@127.0.0.1:{ports['postgres']}/")
        for name, url in urls.items():
            value = value.replace(name, url)
        env[key] = value
    cmd = [str(x) for x in service["command"]]
    cmd[0] = str(BIN / cmd[0])
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(ports[service["command"][0]])
    return cmd, env


def alembic_head(db_url: str) -> str | None:
    """The alembic revision a database is at (None: not migrated)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("select version_num from alembic_version")).scalar()
    except sqlalchemy.exc.ProgrammingError:
        return None
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """PostgreSQL, S3, MLflow and Prefect on loopback; yields their URLs and the client-side contract values."""
    if not PG_BINDIRS:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql: apt-get install postgresql)")
    from medrov.env import OFFLINE_ENV

    root = tmp_path_factory.mktemp("team")
    logs = root / "logs"
    logs.mkdir()
    s3_port, mlflow_port, prefect_port = free_port(), free_port(), free_port()
    s3_url = f"http://127.0.0.1:{s3_port}"
    server_env = {**base_env(root / "server-home"), **OFFLINE_ENV}
    s3_creds = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_EC2_METADATA_DISABLED": "true"}
    # infra/.env as an operator makes it: .env.example with its placeholders replaced
    settings = {
        **read_env_file(ROOT / "infra" / ".env.example"),
        "POSTGRES_PASSWORD": PG_PASSWORD,
        "S3_ACCESS_KEY": S3_KEY,
        "S3_SECRET_KEY": S3_SECRET,
        "MINIO_ROOT_PASSWORD": "test-only-root",
        "MLFLOW_WORKERS": "1",
    }  # two cores here
    assert "change-me" not in {v for k, v in settings.items() if k in ("POSTGRES_PASSWORD", "S3_SECRET_KEY")}
    services = compose_services(settings)

    pg = Postgres({**server_env, "MLFLOW_DB": settings["MLFLOW_DB"], "PREFECT_DB": settings["PREFECT_DB"]})
    servers: list[Server] = []
    try:
        started = time.monotonic()
        said = pg.script("start")
        pg_seconds = time.monotonic() - started
        assert f"127.0.0.1:{pg.port}" in said
        # the cluster listens on loopback only
        assert pg.query("postgres", "show listen_addresses") == [("127.0.0.1",)]
        empty = {
            db: pg.query(db, "select count(*) from information_schema.tables where table_schema = 'public'")[0][0]
            for db in ("mlflow", "prefect")
        }
        assert empty == {"mlflow": 0, "prefect": 0}

        servers.append(
            Server(
                "s3",
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                server_env,
                f"{s3_url}/moto-api/",
                logs,
            )
        )
        servers[0].wait_healthy(60)
        import boto3

        # what infra/compose.yaml's minio-init does: the two buckets
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            region_name="us-east-1",
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
        )
        for bucket in ("mlflow", "dvc"):
            s3.create_bucket(Bucket=bucket)
        ports = {"postgres": pg.port, "mlflow": mlflow_port, "prefect": prefect_port}
        urls = {"http://minio:9000": s3_url}
        mlflow_cmd, mlflow_env = on_loopback(services["mlflow"], ports, urls)
        prefect_cmd, prefect_env = on_loopback(services["prefect-server"], ports, urls)
        assert mlflow_env["MLFLOW_BACKEND_STORE_URI"] == pg.url("mlflow", "+psycopg2")
        assert prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == pg.url("prefect", "+asyncpg")
        servers.append(
            Server("mlflow", mlflow_cmd, {**server_env, **mlflow_env}, f"http://127.0.0.1:{mlflow_port}/health", logs)
        )
        servers.append(
            Server(
                "prefect",
                prefect_cmd,
                {**server_env, **prefect_env, "PREFECT_HOME": str(root / "prefect-server-home")},
                f"http://127.0.0.1:{prefect_port}/api/health",
                logs,
            )
        )
        startup = {s.name: round(s.wait_healthy(), 1) for s in servers[1:]}
        print(f"postgres started in {pg_seconds:.1f} s; servers healthy after {startup} s")
        yield {
            "s3": s3,
            "s3_url": s3_url,
            "pg": pg,
            "logs": logs,
            "settings": settings,
            "services": services,
            "server_env": server_env,
            "mlflow_env": mlflow_env,
            "pg_seconds": pg_seconds,
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "prefect": f"http://127.0.0.1:{prefect_port}/api",
            "contract": {  # infra/team.env.example's variables, with this test's servers as values
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
                "AWS_ENDPOINT_URL_S3": s3_url,
                **s3_creds,
            },
            "root": root,
        }
    finally:
        for server in reversed(servers):
            server.stop()
        if (pg.dir / "data" / "PG_VERSION").is_file():
            pg.script("stop")
        shutil.rmtree(pg.dir, ignore_errors=True)


def test_servers_migrate_empty_postgres_databases(team):
    """Both servers started on the empty databases local.sh made and brought them to their newest schema."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    mlflow_head = ScriptDirectory.from_config(_get_alembic_config(team["pg"].url("mlflow"))).get_current_head()
    assert alembic_head(team["pg"].url("mlflow", "+psycopg2")) == mlflow_head
    import prefect.server.database as prefect_db

    migrations = Path(prefect_db.__file__).parent / "_migrations"
    prefect_heads = ScriptDirectory(
        str(migrations), version_locations=[str(migrations / "versions" / "postgresql")]
    ).get_heads()
    assert alembic_head(team["pg"].url("prefect", "+psycopg2")) in prefect_heads
    tables = {
        r[0]
        for r in team["pg"].query(
            "mlflow", "select table_name from information_schema.tables where table_schema = 'public'"
        )
    }
    assert {"runs", "registered_models", "model_versions", "registered_model_aliases"} <= tables


def test_contract_is_exactly_team_env_example(team):
    assert set(team["contract"]) == set(read_env_file(ROOT / "infra" / "team.env.example"))


CLIENT = r"""
import json, sys
from medrov.env import apply_offline_env

apply_offline_env()
import mlflow
from prefect import flow, task
from prefect.runtime import flow_run

from medrov import tracking
from medrov.config import load_params


@task
def track(tag):
    # the project's own tracking code, with the project's params.yaml: only the environment names the server
    params = load_params(overrides=["tracking.experiment=medrov-team-env"])
    with tracking.step_run(params, "team-env", run_name=tag) as run:
        client = tracking.connect(params.tracking)
        client.log_metric(run.info.run_id, "map50", 0.42)
        client.log_text(run.info.run_id, "logged through the team server", "notes/where.txt")
    return {"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri,
            "tracking_uri": tracking.tracking_uri(params.tracking)}


@flow(name="medrov-team-env")
def team_env(tag):
    return {**track(tag), "flow_run_id": str(flow_run.id)}


print("RESULT " + json.dumps(team_env(sys.argv[1])))
"""


def test_mlflow_and_prefect_data_land_on_the_team_servers(team, tmp_path):
    project = tmp_path / "project"  # a copy of the project, as a clone on a colleague's machine
    project.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, project / name)
    home = tmp_path / "home"
    env = {**base_env(home), **team["contract"]}

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, "team-env-check"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"client flow {time.monotonic() - started:.1f} s")
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    assert out["tracking_uri"] == team["mlflow"]

    # MLflow: the run is on the server (its REST API), its artifact went through the server's proxy into S3
    run = http_json(f"{team['mlflow']}/api/2.0/mlflow/runs/get?run_id={out['run_id']}")["run"]
    assert run["info"]["run_name"] == "team-env-check" and run["info"]["status"] == "FINISHED"
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"map50": 0.42}
    logged = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert logged["train.profile"] == "demo" and logged["tracking.experiment"] == "medrov-team-env"
    assert out["artifact_uri"].startswith("mlflow-artifacts:/"), "artifacts must go through the server's proxy"
    keys = [o["Key"] for o in team["s3"].list_objects_v2(Bucket="mlflow").get("Contents", [])]
    (key,) = [k for k in keys if out["run_id"] in k and k.endswith("notes/where.txt")]
    body = team["s3"].get_object(Bucket="mlflow", Key=key)["Body"].read()
    assert body == b"logged through the team server"

    # Prefect: the flow run is recorded, completed, on the server
    flow_run = http_json(f"{team['prefect']}/flow_runs/{out['flow_run_id']}")
    assert flow_run["state_type"] == "COMPLETED"
    assert http_json(f"{team['prefect']}/flows/{flow_run['flow_id']}")["name"] == "medrov-team-env"
    task_runs = http_json(f"{team['prefect']}/task_runs/filter", {"flow_runs": {"id": {"any_": [out["flow_run_id"]]}}})
    assert [t["state_type"] for t in task_runs] == ["COMPLETED"]

    # `medrov models` in that checkout reads the same server from the environment alone
    models = subprocess.run(
        [sys.executable, "-m", "medrov", "models"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert models.returncode == 0, models.stderr[-4000:]
    assert team["mlflow"] in models.stdout.splitlines()[0]

    # and no embedded default was used: no local MLflow store, no temporary Prefect server or database
    leftovers = [
        p
        for p in (*project.rglob("*"), *home.rglob("*"))
        if p.name in ("mlflow.db", "mlruns", "mlartifacts") or p.suffix == ".db"
    ]
    assert leftovers == []
    assert "temporary server" not in result.stderr.lower()


def test_dvc_remote_on_s3_from_env_only(team, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **base_env(tmp_path / "home"),
        **team["contract"],
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }

    def run(*cmd: str, extra: dict | None = None) -> str:
        done = subprocess.run(cmd, cwd=repo, env={**env, **(extra or {})}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    (repo / "data").mkdir()
    (repo / "data" / "labels.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    run("dvc", "add", "-q", "data/labels.txt")

    said = run("sh", str(ROOT / "infra" / "dvc-remote.sh"), extra={"DVC_REMOTE_URL": "s3://dvc/medrov"})
    assert "default of this checkout" in said
    local_config = (repo / ".dvc" / "config.local").read_text()
    assert "s3://dvc/medrov" in local_config and "remote = team" in local_config
    for config in (local_config, (repo / ".dvc" / "config").read_text()):
        assert "127.0.0.1" not in config and S3_SECRET not in config and S3_KEY not in config

    pushed = run("dvc", "push")
    assert "1 file pushed" in pushed
    keys = [o["Key"] for o in team["s3"].list_objects_v2(Bucket="dvc", Prefix="medrov/").get("Contents", [])]
    assert len(keys) == 1 and keys[0].startswith("medrov/files/md5/")

    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "data" / "labels.txt").unlink()
    run("dvc", "pull")
    assert (repo / "data" / "labels.txt").read_text() == "0 0.5 0.5 0.2 0.2\n"


def test_dvc_remote_script_names_what_is_missing(tmp_path):
    env = {**base_env(tmp_path / "home")}
    done = subprocess.run(
        ["sh", str(ROOT / "infra" / "dvc-remote.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "DVC_REMOTE_URL" in done.stderr


def test_local_ray_stays_local_when_a_team_cluster_is_configured(monkeypatch):
    """RAY_ADDRESS names the team cluster for `medrov tune`; `data.ray_address: local` still means this machine."""
    import ray

    from medrov.env import init_local_ray

    assert not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # nothing listens there: connecting to it would fail
    try:
        init_local_ray(1, log_to_driver=False)
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        assert ray.cluster_resources()["CPU"] == 1
    finally:
        ray.shutdown()


def test_convert_runs_on_the_cluster_ray_address_names(tmp_path):
    """`data.ray_address: auto` + RAY_ADDRESS: the conversion's tasks run on that cluster (a `ray start` head here)."""
    import tempfile

    from medrov.env import OFFLINE_ENV

    short = Path(tempfile.mkdtemp(prefix="mr-"))  # Ray's socket paths must stay short
    (short / "ray_bootstrap_config.yaml").write_text("{}\n")  # HOME holding it stops cloud metadata probes
    port = free_port()
    head_env = {**base_env(short), **OFFLINE_ENV, "HOME": str(short)}
    head = Server(
        "ray-head",
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            '--resources={"medrov_team_cluster": 1}',
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={short / 't'}",
        ],
        head_env,
        "http://127.0.0.1:1/",
        tmp_path,
    )
    try:
        raw, omnis = tmp_path / "raw", tmp_path / "omnis"
        env = {**base_env(tmp_path / "home"), "RAY_ADDRESS": f"127.0.0.1:{port}"}
        medrov = [sys.executable, "-m", "medrov"]
        demo = subprocess.run(
            [
                *medrov,
                "demo-sources",
                "--out",
                str(raw),
                "-S",
                "demo.ct_volumes=1",
                "-S",
                "demo.mri_volumes=1",
                "-S",
                "demo.xray_images=2",
                "-S",
                "demo.microscopy_images=2",
                "-S",
                "demo.endoscopy_images=2",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert demo.returncode == 0, demo.stderr
        sources = (ROOT / "data" / "sources.yaml").read_text().replace("raw/synthetic/", f"{raw}/")
        (tmp_path / "sources.yaml").write_text(sources.split("  # ---- real public data")[0])
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in head.log.read_text():
            assert head.proc.poll() is None and time.monotonic() < deadline, head.log.read_text()[-3000:]
            time.sleep(0.5)
        done = subprocess.run(
            [
                *medrov,
                "convert",
                "--sources",
                str(tmp_path / "sources.yaml"),
                "--out",
                str(omnis),
                "--no-progress",
                "-S",
                "data.ray_address=auto",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        assert "converted 9, quarantined 0, total 9" in done.stdout
        (line,) = [x for x in done.stderr.splitlines() if "converting on Ray (auto)" in x]
        assert "medrov_team_cluster" in line, line  # the resources of the head started above, not a new local Ray
        assert "node:127.0.0.1" in line, line
    finally:
        head.stop()
        shutil.rmtree(short, ignore_errors=True)


# ------------------------------------------------------------------------------------ several users at once
PROMPTS = ["liver", "right kidney", "colon polyp"]
PROMPT_ARGS = [arg for prompt in PROMPTS for arg in ("-p", prompt)]
DECISION = r"^(?P<model>\S+) v(?P<version>\d+) \(run (?P<run>\w+)\): (?P<decision>.+)$"


def medrov(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """One ``medrov`` command, as a colleague types it in their checkout."""
    return subprocess.run(
        [sys.executable, "-m", "medrov", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def printed_json(stdout: str) -> dict:
    """The JSON summary ``medrov predict`` prints last (libraries may print lines before it)."""
    lines = stdout.splitlines()
    return json.loads("\n".join(lines[len(lines) - 1 - lines[::-1].index("{") :]))


def work_tree(dest: Path, omnis: Path) -> Path:
    """A colleague's checkout: the project's params.yaml, shrunk (1 epoch at 64 px, MiniLM), with its own data."""
    dest.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    # its own copy of the converted data: ultralytics writes label caches next to the labels
    shutil.copytree(omnis, dest / "data" / "omnis", ignore=shutil.ignore_patterns("*.cache"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["text"]["encoder"] = "minilm"
    params["train"]["profiles"]["demo"].update(epochs=1, imgsz=64, batch=8, workers=0)
    params["evaluate"].update(metrics=None, plots=None)
    # what this module checks is the registry, not the training mechanisms: skip their extra passes
    params["pseudo"].update(labels=False, negatives=False)
    params["tracking"]["epoch_eval"] = False
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


class Colleague(threading.Thread):
    """`medrov train` then `medrov promote` in one work tree (each a separate process)."""

    def __init__(self, name: str, tree: Path, env: dict[str, str]):
        super().__init__(name=name, daemon=True)
        self.tree, self.env = tree, env
        self.trained = threading.Event()
        self.train: subprocess.CompletedProcess | None = None
        self.promote: subprocess.CompletedProcess | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.train = medrov(["train"], self.tree, self.env)
        finally:
            self.trained.set()
            self.seconds = {"train": round(time.monotonic() - started, 1)}
        if self.train.returncode == 0:
            started = time.monotonic()
            self.promote = medrov(["promote"], self.tree, self.env)
            self.seconds["promote"] = round(time.monotonic() - started, 1)

    def save_logs(self, folder: Path) -> None:
        for step in ("train", "promote"):
            done = getattr(self, step)
            if done is not None:
                (folder / f"{self.name}-{step}.log").write_text(f"{done.stdout}\n{done.stderr}")

    def decision(self) -> dict[str, str]:
        import re

        (line,) = [m.groupdict() for m in (re.match(DECISION, x) for x in self.promote.stdout.splitlines()) if m]
        return {**line, "stdout": self.promote.stdout}


@pytest.fixture(scope="module")
def two_colleagues(team, tiny_omnis, tmp_path_factory):
    """Colleagues a and b train, log and promote against the team servers at the same time, while c (no model of
    its own) keeps running ``medrov predict`` without --weights.

    To make the two promotions overlap for certain, the test holds an EXCLUSIVE lock on MLflow's alias table
    (reads go on, alias writes wait) until both promotions wait on it, so both have read the registry before
    either moves an alias: the worst interleaving two people can meet. Promotion serialises itself (issue 15: a
    lock per host and server URI), so the second waits on that lock instead: the alias lock then goes 45 s after
    the first promotion started waiting on it. Both colleagues are on this host (one temp dir, one lock)."""
    root = tmp_path_factory.mktemp("colleagues")
    env = {**base_env(root / "home"), **team["contract"]}
    pg = team["pg"]
    lock = pg.connect("mlflow")
    with lock.cursor() as cur:
        cur.execute("LOCK TABLE registered_model_aliases IN EXCLUSIVE MODE")
    colleagues = [Colleague(n, work_tree(root / n, tiny_omnis), env) for n in ("a", "b")]
    viewer = work_tree(root / "c", tiny_omnis)
    image = min((viewer / "data" / "omnis" / "images").rglob("*.png"))
    predictions: list[tuple[subprocess.CompletedProcess, bool]] = []
    try:
        started = time.monotonic()
        for c in colleagues:
            c.start()
        for c in colleagues:
            assert c.trained.wait(1200), f"{c.name}: training did not finish"
        trained_s = time.monotonic() - started

        def predict_meanwhile() -> None:  # the third colleague, while the promotions are in flight
            for i in range(30):
                in_flight = any(c.is_alive() for c in colleagues)
                done = medrov(
                    [
                        "predict",
                        str(image),
                        *PROMPT_ARGS,
                        "--out",
                        str(root / f"pred-{i}"),
                        "--conf",
                        "1e-6",
                        "--imgsz",
                        "64",
                    ],
                    viewer,
                    env,
                )
                predictions.append((done, in_flight))
                if done.returncode == 0 and not in_flight:
                    return
                time.sleep(1)

        viewer_thread = threading.Thread(target=predict_meanwhile, daemon=True)
        viewer_thread.start()
        waiting, first_waiter, deadline = 0, None, time.monotonic() + 300
        while time.monotonic() < deadline and all(c.is_alive() for c in colleagues):
            waiting = pg.query(
                "mlflow", "select count(*) from pg_stat_activity where datname = 'mlflow' and wait_event_type = 'Lock'"
            )[0][0]
            first_waiter = first_waiter or (time.monotonic() if waiting else None)
            # both wait on the alias table, or one does and the other waits on a lock of its own
            if waiting >= 2 or (first_waiter and time.monotonic() - first_waiter > 45):
                break
            time.sleep(0.3)
        # both promotions in flight at once: each process started after its training and neither has ended
        overlapped = all(c.trained.is_set() and c.promote is None and c.is_alive() for c in colleagues)
        lock.rollback()  # releases the lock
        for c in colleagues:
            c.join(900)
        viewer_thread.join(900)
        for c in colleagues:
            c.save_logs(team["logs"])
        print(
            f"trainings done after {trained_s:.0f} s; per colleague {[c.seconds for c in colleagues]}; "
            f"promotions overlapped: {overlapped} ({waiting} waited on the alias table); "
            f"{len(predictions)} predictions by c "
            f"({sum(f for _, f in predictions)} while promotions ran)"
        )
    finally:
        lock.close()
    return {
        "colleagues": colleagues,
        "predictions": predictions,
        "overlapped": overlapped,
        "image": image,
        "viewer": viewer,
        "env": env,
        "root": root,
    }


def registry_versions(mlflow_url: str, name: str = "medrov") -> dict[str, dict]:
    """Every version of ``name`` over MLflow's REST API: version -> run id, tags; plus the aliases."""
    found = http_json(f"{mlflow_url}/api/2.0/mlflow/model-versions/search?filter=name%3D%27{name}%27")
    model = http_json(f"{mlflow_url}/api/2.0/mlflow/registered-models/get?name={name}")["registered_model"]
    versions = {
        v["version"]: {"run_id": v["run_id"], "tags": {t["key"]: t["value"] for t in v.get("tags", [])}}
        for v in found.get("model_versions", [])
    }
    return {"versions": versions, "aliases": {a["alias"]: a["version"] for a in model.get("aliases", [])}}


@pytest.mark.timeout(1500)  # its fixture runs two trainings side by side on two cores
def test_two_colleagues_train_and_promote_while_a_third_predicts(team, two_colleagues):
    colleagues = two_colleagues["colleagues"]
    for c in colleagues:
        assert c.train.returncode == 0, f"{c.name} train:\n{c.train.stderr[-4000:]}"
        assert c.promote is not None, f"{c.name} did not promote"
    runs = {c.name: json.loads((c.tree / "runs" / "demo" / "mlflow.json").read_text())["run_id"] for c in colleagues}
    assert len(set(runs.values())) == 2

    # one version per run, each the model of its own run
    registry = registry_versions(team["mlflow"])
    assert sorted(v["run_id"] for v in registry["versions"].values()) == sorted(runs.values())
    assert set(registry["aliases"]) == {"champion", "challenger"}

    # c picked the champion up from the registry while the promotions happened; before there was one, it said
    # in one line that it had no model (never a crash on a half-written registry)
    predictions = two_colleagues["predictions"]
    ok = [p for p, _ in predictions if p.returncode == 0]
    assert ok, predictions[-1][0].stderr[-3000:]
    assert printed_json(ok[0].stdout)["model"] == "models:/medrov@champion"
    for failed, _ in [(p, f) for p, f in predictions if p.returncode != 0]:
        assert "no trained model" in failed.stderr.splitlines()[-1], failed.stderr[-3000:]
    assert any(in_flight for p, in_flight in predictions), "c predicted only after the promotions"

    # `medrov models` in c's checkout shows both versions, with the aliases the registry holds
    listed = medrov(["models"], two_colleagues["viewer"], two_colleagues["env"])
    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[2:]}
    assert rows == {
        v: ",".join(sorted(a for a, av in registry["aliases"].items() if av == v)) or "-" for v in registry["versions"]
    }


def test_overlapping_promotions_decide_as_if_one_after_the_other(team, two_colleagues):
    """Both promotions succeed and each printed decision is true: one colleague's model became the first
    champion, the other's was compared with it; the champion is the better of the two (by the gate's rule)."""
    assert two_colleagues["overlapped"], "the promotions did not overlap"
    for c in two_colleagues["colleagues"]:
        assert c.promote.returncode == 0, f"{c.name} promote:\n{c.promote.stderr[-2000:]}"
    decided = {c.name: c.decision() for c in two_colleagues["colleagues"]}
    registry = registry_versions(team["mlflow"])
    firsts = [d for d in decided.values() if d["decision"] == "FIRST"]
    assert len(firsts) == 1, f"both decided as if alone: {[d['stdout'] for d in decided.values()]}"
    (first,) = firsts
    (other,) = [d for d in decided.values() if d is not first]
    assert other["decision"] in ("PROMOTED", "REFUSED")
    assert f"champion v{first['version']} " in other["stdout"], "the second did not compare with the first"
    tags = {v: registry["versions"][v]["tags"] for v in (first["version"], other["version"])}
    assert tags[other["version"]]["medrov.promote.champion_version"] == first["version"]
    champion = other["version"] if other["decision"] == "PROMOTED" else first["version"]
    assert registry["aliases"]["champion"] == champion
    gate = {v: float(t["medrov.gate.all"]) for v, t in tags.items()}
    loser = first["version"] if champion == other["version"] else other["version"]
    min_gain = float(tags[other["version"]]["medrov.promote.min_gain"])
    assert gate[champion] > gate[loser] - min_gain  # the loser was not better by the margin the gate asks


# ----------------------------------------------------------------------------------------- backup and restore
def test_registry_backup_restores_into_a_fresh_database_and_bucket(team, two_colleagues, tmp_path):
    """make registry-backup / registry-restore with the MLflow server's environment; a server on the restored
    database and bucket lists the same versions and aliases, and its champion predicts the same boxes."""
    make = ["make", "-s", "-C", str(ROOT)]
    server_env = {**team["server_env"], **team["mlflow_env"]}
    backup = tmp_path / "backup"
    done = subprocess.run(
        [*make, "registry-backup", f"BACKUP_DIR={backup}", f"PY={sys.executable}"],
        env=server_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((backup / "manifest.json").read_text())
    keys = [
        o["Key"]
        for page in team["s3"].get_paginator("list_objects_v2").paginate(Bucket="mlflow")
        for o in page.get("Contents", [])
    ]
    assert manifest["objects"] == len(keys) > 0 and "mlflow@" not in manifest["database"]
    assert PG_PASSWORD not in (backup / "manifest.json").read_text() + done.stdout

    # a fresh database and bucket, and the MLflow server started on them (its settings name them)
    team["pg"].create_database("mlflow_restored")
    restored_env = {
        **team["mlflow_env"],
        "MLFLOW_BACKEND_STORE_URI": team["pg"].url("mlflow_restored", "+psycopg2"),
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow-restored/",
    }
    done = subprocess.run(
        [*make, "registry-restore", f"BACKUP_DIR={backup}", f"PY={sys.executable}"],
        env={**team["server_env"], **restored_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    again = subprocess.run(
        [*make, "registry-restore", f"BACKUP_DIR={backup}", f"PY={sys.executable}"],
        env={**team["server_env"], **restored_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode != 0 and "mlflow_restored: database is not empty" in again.stderr

    port = free_port()
    cmd, _ = on_loopback(
        team["services"]["mlflow"],
        {"postgres": team["pg"].port, "mlflow": port, "prefect": 0},
        {"http://minio:9000": team["s3_url"]},
    )
    restored = Server(
        "mlflow-restored", cmd, {**team["server_env"], **restored_env}, f"http://127.0.0.1:{port}/health", team["logs"]
    )
    try:
        restored.wait_healthy()
        viewer, env = two_colleagues["viewer"], two_colleagues["env"]
        outputs = {}
        for name, uri in (("original", team["mlflow"]), ("restored", f"http://127.0.0.1:{port}")):
            client_env = {**env, "MLFLOW_TRACKING_URI": uri}
            listed = medrov(["models"], viewer, client_env)
            assert listed.returncode == 0, listed.stderr[-3000:]
            out = tmp_path / f"pred-{name}"
            predicted = medrov(
                [
                    "predict",
                    str(two_colleagues["image"]),
                    *PROMPT_ARGS,
                    "--weights",
                    "models:/medrov@champion",
                    "--out",
                    str(out),
                    "--conf",
                    "1e-6",
                    "--imgsz",
                    "64",
                ],
                viewer,
                client_env,
            )
            assert predicted.returncode == 0, predicted.stderr[-3000:]
            (result,) = out.glob("*.json")
            outputs[name] = {
                "models": listed.stdout.splitlines()[1:],
                "frames": json.loads(result.read_text())["frames"],
                "registry": registry_versions(uri),
            }
    finally:
        restored.stop()
    assert outputs["restored"]["registry"] == outputs["original"]["registry"]
    assert outputs["restored"]["models"] == outputs["original"]["models"]
    assert outputs["restored"]["frames"] == outputs["original"]["frames"]
    assert any(f["boxes"] for f in outputs["original"]["frames"]), "the champion found nothing to compare"
    restored_keys = [
        o["Key"]
        for page in team["s3"].get_paginator("list_objects_v2").paginate(Bucket="mlflow-restored")
        for o in page.get("Contents", [])
    ]
    assert sorted(restored_keys) == sorted(keys)
