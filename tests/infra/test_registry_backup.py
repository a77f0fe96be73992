"""infra/registry_backup.py refuses what it cannot back up or restore with one line naming the file and the reason
(the round trip itself runs against real servers in tests/integration/test_team_env.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = ROOT / "infra" / "registry_backup.py"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_backup_names_the_missing_setting(tmp_path):
    done = run(["backup", str(tmp_path / "b")], {})
    assert done.returncode == 1
    assert "MLFLOW_BACKEND_STORE_URI is not set" in done.stderr and not (tmp_path / "b").exists()


def test_only_a_postgres_store_is_backed_up(tmp_path):
    done = run(["backup", str(tmp_path / "b")], {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert done.returncode == 1 and "only a PostgreSQL store" in done.stderr


def test_a_backup_never_overwrites_another(tmp_path):
    (tmp_path / "b").mkdir()
    done = run(["backup", str(tmp_path / "b")], {"MLFLOW_BACKEND_STORE_URI": "postgresql://u@127.0.0.1:9/db"})
    assert done.returncode == 1 and f"{tmp_path / 'b'}: already exists" in done.stderr


def test_restore_refuses_an_unfinished_or_damaged_backup(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    done = run(["restore", str(folder)], {})
    assert done.returncode == 1 and f"{folder / 'manifest.json'}: no manifest" in done.stderr
    (folder / "mlflow.dump").write_bytes(b"not the dump the manifest describes")
    (folder / "manifest.json").write_text(json.dumps({"dump_md5": "0" * 32, "objects": 0}))
    done = run(["restore", str(folder)], {})
    assert done.returncode == 1 and f"{folder / 'mlflow.dump'}: checksum differs" in done.stderr


def test_restore_checks_the_object_count(tmp_path):
    import hashlib

    folder = tmp_path / "b"
    (folder / "artifacts" / "1").mkdir(parents=True)
    (folder / "mlflow.dump").write_bytes(b"dump")
    (folder / "artifacts" / "1" / "a.txt").write_text("a")
    (folder / "manifest.json").write_text(json.dumps({"dump_md5": hashlib.md5(b"dump").hexdigest(), "objects": 2}))
    done = run(["restore", str(folder)], {})
    assert done.returncode == 1 and "1 files, the manifest says 2" in done.stderr
