"""dvc.yaml lists, for each stage, exactly the medrov/ files its command imports (derived with ``ast``)."""

from __future__ import annotations

from tests.stage_deps import stage_deps


def test_each_stage_lists_the_code_its_command_imports():
    derived, listed = stage_deps.stage_code(), stage_deps.listed_code()
    assert set(derived) == {"demo_sources", "convert", "validate", "report", "train", "evaluate", "promote"}
    for stage, files in derived.items():
        assert listed[stage] == files, (
            f"{stage}: missing {sorted(files - listed[stage])}, "
            f"not imported {sorted(listed[stage] - files)} (python scripts/stage_deps.py)"
        )


def test_the_derivation_follows_the_command_and_not_the_whole_cli():
    code = stage_deps.stage_code()
    # the training rule and the tracking adapter are training code; data conversion is not
    assert {
        "medrov/model/pseudo.py",
        "medrov/model/mechanisms.py",
        "medrov/model/ultra.py",
        "medrov/config.py",
        "medrov/tracking/callbacks.py",
        "medrov/text/encoders.py",
    } <= code["train"]
    assert "medrov/data/convert.py" not in code["train"] and "medrov/data/validate.py" not in code["train"]
    # evaluation reads the model, the text encoders and the presence matrix
    assert {
        "medrov/model/build.py",
        "medrov/model/detector.py",
        "medrov/text/cache.py",
        "medrov/data/presence.py",
    } <= code["evaluate"]
    # conversion knows no model; every stage runs the CLI and its start-up
    assert not [f for f in code["convert"] if f.startswith("medrov/model/")]
    assert all({"medrov/cli.py", "medrov/env.py", "medrov/config.py"} <= files for files in code.values())
    assert "medrov/catalog/vocabulary.yaml" in code["convert"]  # package data the code reads
