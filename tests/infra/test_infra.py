"""infra/ checked without a container engine: the compose file, the images, the Ray and KubeRay definitions,
the env contract and the absence of committed secrets.

Each check reads the files as Docker Compose, Ray or Kubernetes would (compose's ``${VAR:-default}``
interpolation with the values of ``infra/.env.example``; Ray's own config validation) and compares them with
the project's pins (pyproject.toml, the Makefile) and with the names the tools actually read.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

INFRA = ROOT / "infra"
SERVICES = {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "worker"}
PLACEHOLDER = "change-me"
SECRET_KEY_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE", re.I)

# compose interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ escapes
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            assert key not in pairs, f"{path.name}: {key} set twice"
            pairs[key] = value
    return pairs


def interpolate(text: str, env: dict[str, str]) -> str:
    """Docker Compose's variable interpolation (the subset the compose spec defines)."""

    def one(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise KeyError(f"required variable {name} is unset: {arg}")
        return value or ""

    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def referenced_vars(text: str) -> list[re.Match]:
    return list(_VAR.finditer(text.replace("$$", "\0")))


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return read_env_file(INFRA / ".env.example")


@pytest.fixture(scope="module")
def team_env() -> dict[str, str]:
    return read_env_file(INFRA / "team.env.example")


@pytest.fixture(scope="module")
def compose(server_env) -> dict:
    return yaml.safe_load(interpolate((INFRA / "compose.yaml").read_text(), server_env))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, out = "", []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        joined += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = joined.partition(" ")
            out.append((word.upper(), rest.strip()))
            joined = ""
    return out


def pyproject_spec(name: str) -> str:
    """The version specifier pyproject.toml gives a dependency, e.g. '==3.17.*'."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.match(rf"^{re.escape(name)}(\[[^\]]*\])?\s*(?P<spec>[<>=!~].*)$", dep, re.I)
        if match:
            return match["spec"].strip()
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


# ---- compose -------------------------------------------------------------------------------------------------


def test_compose_has_every_service_each_with_a_healthcheck(compose):
    assert set(compose["services"]) == SERVICES
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"service {name} has no health check"
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"


def test_every_variable_compose_reads_is_in_env_example_or_has_a_default(server_env):
    text = (INFRA / "compose.yaml").read_text()
    matches = referenced_vars(text)
    assert len(matches) > 20
    for m in matches:
        if m["op"] in (":-", "-"):
            continue
        assert m["name"] in server_env, f"compose.yaml reads ${{{m['name']}}} but infra/.env.example does not set it"
    # every required secret fails `up` with its name when the operator forgot it
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "S3_SECRET_KEY"):
        with pytest.raises(KeyError, match=secret):
            interpolate(text, {k: v for k, v in server_env.items() if k != secret})
    # and .env.example sets nothing that compose ignores
    used = {m["name"] for m in matches}
    assert set(server_env) <= used, f"unused in compose.yaml: {sorted(set(server_env) - used)}"


def test_defaults_in_compose_match_env_example(server_env):
    """A default written in compose.yaml is the value .env.example documents, so neither drifts alone."""
    for m in referenced_vars((INFRA / "compose.yaml").read_text()):
        if m["op"] == ":-" and m["name"] in server_env:
            assert m["arg"] == server_env[m["name"]], f"{m['name']}: compose default {m['arg']!r} != .env.example"


def test_published_ports_bind_loopback_and_postgres_is_not_published(compose, server_env):
    assert server_env["MEDROV_BIND"] == "127.0.0.1"
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this machine"
            published[int(host_port)] = name
    assert published == {9000: "minio", 9001: "minio", 5000: "mlflow", 4200: "prefect-server"}
    assert "ports" not in compose["services"]["postgres"]
    raw = (INFRA / "compose.yaml").read_text()
    assert all(
        p.strip().startswith('- "${MEDROV_BIND:-127.0.0.1}:')
        for p in raw.splitlines()
        if re.match(r'\s*- "\$\{MEDROV_BIND', p)
    )
    assert raw.count("${MEDROV_BIND:-127.0.0.1}:") == 4


def test_volumes_are_declared_used_and_bind_sources_exist(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for spec in service.get("volumes", []):
            source, target = spec.split(":")[:2]
            assert target.startswith("/"), f"{name}: {spec}"
            if source.startswith((".", "/")):
                assert (INFRA / source).resolve().exists(), f"{name} mounts {source}, which is not in infra/"
            else:
                assert source in declared, f"{name} uses volume {source}, not declared under volumes:"
                used.add(source)
    assert used == declared == {"postgres-data", "minio-data", "worker-home", "worker-cache"}


def test_images_are_built_here_or_pinned(compose, server_env):
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image} is not pinned to a tag"
        if "build" in service:
            context = (INFRA / service["build"]["context"]).resolve()
            dockerfile = context / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name} builds from {dockerfile}, which does not exist"
    assert compose["services"]["worker"]["build"]["context"] == ".."
    assert compose["services"]["worker"]["image"] == server_env["MEDROV_IMAGE"]
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert server_env["MEDROV_IMAGE"].endswith(f":{version}"), "the worker image tag follows the project version"


def test_startup_order_and_one_shot_bucket_job(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] in ("service_healthy", "service_completed_successfully")
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    script = services["minio-init"]["command"][0]
    assert "mc mb --ignore-existing" in script and "$MLFLOW_BUCKET" in script and "$DVC_BUCKET" in script
    assert "mc admin user add" in script  # the service account MLflow, DVC and the worker use


def test_env_names_in_compose_are_ones_the_tools_read(compose):
    """A misspelt MLFLOW_*/PREFECT_* variable would be ignored silently: each must be a name the tool reads."""
    import mlflow.environment_variables as mlflow_env
    from mlflow.cli import server as mlflow_server
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    mlflow_names = {v.name for v in vars(mlflow_env).values() if isinstance(getattr(v, "name", None), str)}
    mlflow_names |= {p.envvar for p in mlflow_server.params if isinstance(p.envvar, str)}
    prefect_names = set(_get_valid_setting_names(Settings))
    seen = 0
    for name in ("mlflow", "prefect-server", "worker"):  # the services that run mlflow or prefect
        for key in compose["services"][name].get("environment") or {}:
            if key.startswith("MLFLOW_"):
                assert key in mlflow_names, f"{name}: mlflow reads no {key}"
                seen += 1
            elif key.startswith("PREFECT_"):
                assert key in prefect_names, f"{name}: prefect has no setting {key}"
                seen += 1
    assert seen >= 12
    assert "PREFECT_NOT_A_SETTING" not in prefect_names and "MLFLOW_NOT_A_VAR" not in mlflow_names


def test_worker_gets_the_whole_team_contract(compose, team_env):
    worker = compose["services"]["worker"]["environment"]
    assert set(team_env) <= set(worker), f"worker lacks {sorted(set(team_env) - set(worker))}"
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert "RAY_ADDRESS" in worker
    # the MLflow server proxies artifacts: it alone holds S3 settings, and accepts the Host the worker sends
    mlflow = compose["services"]["mlflow"]["environment"]
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "mlflow:5000" in mlflow["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert compose["services"]["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://"
    )


def test_gpu_overlay_targets_the_worker():
    overlay = yaml.safe_load((INFRA / "compose.gpu.yaml").read_text())
    assert set(overlay["services"]) == {"worker"}
    devices = overlay["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


# ---- images --------------------------------------------------------------------------------------------------


def test_worker_dockerfile_cuda_runtime_non_root_torch_first():
    steps = dockerfile_instructions(INFRA / "Dockerfile")
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    base = next(a for word, a in steps if word == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base, base

    import torch

    if torch.version.cuda:  # the wheels the Makefile installs here are CUDA builds: the base matches their CUDA
        assert base.split(":")[1].startswith(torch.version.cuda + "."), f"{base} vs torch CUDA {torch.version.cuda}"

    users = [a for word, a in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), f"runs as {users}"
    assert steps[-1][0] in ("CMD", "ENTRYPOINT") and [w for w, _ in steps].index("USER") > max(
        i for i, (w, _) in enumerate(steps) if w == "RUN"
    ), "every RUN happens before switching to the runtime user"
    assert any(w == "RUN" and f"--uid {users[-1]}" in a for w, a in steps)

    runs = [a for word, a in steps if word == "RUN"]
    torch_step = next(i for i, a in enumerate(runs) if "pip install ${TORCH_SPEC}" in a)
    project_step = next(i for i, a in enumerate(runs) if "pip install -e ." in a)
    assert torch_step < project_step
    make_spec = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    assert args["TORCH_SPEC"].strip('"') == make_spec.strip(), "image and Makefile install the same torch"


def test_docker_build_context_leaves_out_data_and_secrets():
    ignored = set((INFRA / "Dockerfile.dockerignore").read_text().split())
    for entry in (
        ".git",
        ".venv",
        "data/raw",
        "data/omnis",
        "runs",
        "infra/.env",
        "infra/team.env",
        ".dvc/config.local",
    ):
        assert entry in ignored


def test_server_image_pins_what_pyproject_pins():
    from packaging.specifiers import SpecifierSet

    text = (INFRA / "server.Dockerfile").read_text()
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([0-9][^"]*)"', text))
    for name in ("mlflow", "prefect"):
        assert SpecifierSet(pyproject_spec(name)).contains(pins[name]), f"{name}=={pins[name]} vs pyproject"
    for name in ("fastapi", "sqlalchemy"):
        assert f'"{name}{pyproject_spec(name)}"' in text, f"server image lacks the {name} pin of pyproject.toml"
    assert {"psycopg2-binary", "asyncpg", "boto3"} <= set(pins)
    users = [a for w, a in dockerfile_instructions(INFRA / "server.Dockerfile") if w == "USER"]
    assert users and users[-1] not in ("root", "0")


# ---- Ray -----------------------------------------------------------------------------------------------------


def test_ray_up_config_is_valid_and_gpu_workers_scale_from_zero(server_env, team_env):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)  # Ray's own schema: a typo or a misplaced key fails here as it would in `ray up`
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    gpu = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 < gpu[0]["max_workers"] <= config["max_workers"]
    assert gpu[0]["resources"]["GPU"] >= 1
    assert config["docker"]["image"] == server_env["MEDROV_IMAGE"]
    assert "--gpus" in config["docker"]["worker_run_options"]
    # the team contract reaches every container through the mounted env file, made from team.env.example
    ((remote_env, local_env),) = raw["file_mounts"].items()
    assert local_env == "infra/team.env" and (ROOT / "infra" / "team.env.example").is_file()
    assert remote_env in config["docker"]["run_options"]
    assert "RAY_ADDRESS" not in team_env, "RAY_ADDRESS in a node's environment would override `ray start --address`"


def test_kuberay_manifest_gpu_group_scales_from_zero(server_env, team_env):
    docs = list(yaml.safe_load_all((INFRA / "ray" / "raycluster.yaml").read_text()))
    assert len(docs) == 1
    cluster = docs[0]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(pyproject_spec("ray")).contains(spec["rayVersion"]), "cluster Ray must match the client's"
    import ray

    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] >= 1
    pods = [spec["headGroupSpec"]["template"]["spec"], group["template"]["spec"]]
    (worker,) = pods[1]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == worker["resources"]["limits"]["nvidia.com/gpu"]
    uid = int(next(a for w, a in dockerfile_instructions(INFRA / "Dockerfile") if w == "USER"))
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert container["image"] == server_env["MEDROV_IMAGE"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{container['name']} mounts undeclared volume {mount['name']}"
            env = container.get("env", [])
            assert env, f"{container['name']} gets no team env"
            for var in env:
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "medrov-team" and ref["key"] == var["name"]
                assert var["name"] in team_env, f"{var['name']} is not in team.env.example, so the secret lacks it"


# ---- env contract and secrets --------------------------------------------------------------------------------


def contract_table() -> dict[str, str]:
    """``| `VAR` | ... | read by |`` rows of the env contract section of infra/README.md."""
    text = (INFRA / "README.md").read_text()
    section = text.split("## Env contract", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"^\|\s*`([A-Z][A-Z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match[1]] = match[2]
    return rows


def test_readme_contract_names_every_team_variable_and_who_reads_it(team_env):
    table = contract_table()
    assert set(team_env) <= set(table), f"README lacks {sorted(set(team_env) - set(table))}"
    for extra in ("RAY_ADDRESS", "MLFLOW_S3_ENDPOINT_URL", "DVC_REMOTE_URL"):
        assert extra in table
    for var, cells in table.items():
        assert cells.count("|") >= 2 and cells.rsplit("|", 1)[-1].strip(), f"{var}: no 'read by' entry"


def test_the_variables_are_the_ones_the_libraries_read():
    import mlflow.environment_variables as mlflow_env
    from prefect.settings import PREFECT_API_URL
    from ray._private import ray_constants

    assert mlflow_env.MLFLOW_TRACKING_URI.name == "MLFLOW_TRACKING_URI"
    assert mlflow_env.MLFLOW_S3_ENDPOINT_URL.name == "MLFLOW_S3_ENDPOINT_URL"
    assert PREFECT_API_URL.name == "PREFECT_API_URL"
    assert ray_constants.RAY_ADDRESS_ENVIRONMENT_VARIABLE == "RAY_ADDRESS"


def test_env_examples_hold_placeholders_only(server_env, team_env):
    for name, env in (("infra/.env.example", server_env), ("infra/team.env.example", team_env)):
        secrets = {k: v for k, v in env.items() if SECRET_KEY_NAME.search(k)}
        assert secrets, name
        for key, value in secrets.items():
            assert value == PLACEHOLDER, f"{name}: {key} must be the placeholder {PLACEHOLDER!r}"


def entropy(token: str) -> float:
    counts = Counter(token)
    return -sum(c / len(token) * math.log2(c / len(token)) for c in counts.values())


SECRET_PATTERNS = [
    (re.compile(r"AKIA[0-9A-Z]{16}"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\bminioadmin\b"), "MinIO's default credentials"),
    (re.compile(r"://[^/\s:@${}]+:[^/\s@${}]+@"), "a URL with literal credentials"),
]


def find_secrets(text: str) -> list[str]:
    """Reasons the text looks like it holds a real secret (empty when it does not)."""
    found = [why for pattern, why in SECRET_PATTERNS if pattern.search(text)]
    for token in re.findall(r"[A-Za-z0-9+/_=-]{24,}", text):
        if re.search(r"\d", token) and re.search(r"[A-Za-z]", token) and entropy(token) > 4.2:
            found.append(f"a high-entropy string {token[:6]}...")
    for key, value in re.findall(r"^\s*([A-Z_]*(?:PASSWORD|SECRET)[A-Z_]*)\s*[=:]\s*(\S+)", text, re.M):
        if value not in (PLACEHOLDER, '""') and not value.startswith("${"):
            found.append(f"{key} set to a literal")
    return found


def test_secret_scanner_catches_planted_secrets():
    assert find_secrets("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert find_secrets("url: postgresql://medrov:hunter2@db:5432/mlflow")
    assert find_secrets("POSTGRES_PASSWORD: s3cret")
    assert find_secrets("id AKIAIOSFODNN7EXAMPLE")
    assert not find_secrets(
        "POSTGRES_PASSWORD=change-me\nurl: postgresql+asyncpg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres"
    )


def test_no_secret_values_in_infra():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "infra"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "infra/compose.yaml" in listed and "infra/.env" not in listed and "infra/team.env" not in listed
    for rel in listed:
        text = (ROOT / rel).read_text(errors="replace")
        assert not find_secrets(text), f"{rel}: {find_secrets(text)}"
    for filled in ("infra/.env", "infra/team.env", ".dvc/config.local"):
        ignored = subprocess.run(["git", "check-ignore", "-q", filled], cwd=ROOT)
        assert ignored.returncode == 0, f"{filled} is not git-ignored: credentials could be committed"
