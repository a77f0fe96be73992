"""The guard of tests/conftest.py sees a file written into the project's own outputs."""

from __future__ import annotations

from tests.conftest import project_state


def test_project_state_sees_added_changed_and_removed_files(tmp_path):
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "mlflow.db").write_bytes(b"db")
    (tmp_path / "elsewhere.txt").write_text("not watched")
    first = project_state(tmp_path)
    assert set(first) == {"mlflow.db"}
    (tmp_path / "runs" / "demo" / "results.csv").write_text("epoch\n1\n")
    (tmp_path / "mlflow.db").write_bytes(b"db, grown")
    (tmp_path / ".cache" / "text").mkdir(parents=True)
    (tmp_path / ".cache" / "text" / "x.pt").write_bytes(b"1")
    second = project_state(tmp_path)
    assert set(second) == {"mlflow.db", "runs/demo/results.csv", ".cache/text/x.pt"}
    assert second["mlflow.db"] != first["mlflow.db"]
    (tmp_path / "mlflow.db").unlink()
    assert "mlflow.db" not in project_state(tmp_path)


def test_a_store_elsewhere_keeps_its_artifacts_beside_it(tmp_path, monkeypatch):
    """An SQLite store outside the project (a test's) gets its experiments' artifacts next to it, not in the
    project's mlartifacts/ (where a tune test once left a folder the project's database did not know)."""
    from medrov.config import load_params
    from medrov.tracking.store import connect
    from tests.conftest import ROOT

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    section = load_params(
        ROOT / "params.yaml", [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", "tracking.experiment=elsewhere"]
    ).tracking
    client = connect(section)
    location = client.get_experiment_by_name("elsewhere").artifact_location
    assert location == (tmp_path / "mlartifacts" / "elsewhere").as_uri()


def test_settings_in_force_are_the_steps_sections_and_its_profile():
    from medrov.config import flatten, load_params
    from medrov.tracking import settings_in_force
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml", ["train.profile=demo"])
    train = settings_in_force(params, "train")
    assert "train.profiles.demo.epochs" in train and "pseudo.iou_t" in train and "text.encoder" in train
    assert not any(k.startswith(("train.profiles.paper.", "demo.", "tune.", "data.", "validate.")) for k in train)
    assert set(settings_in_force(params, "train", profile="paper")) - set(train) >= {"train.profiles.paper.epochs"}
    assert settings_in_force(params, "other") == flatten(params)
    assert len(train) < len(flatten(params)) / 2
