"""The shape of the package, read from its source with ``ast`` (nothing imported): the tracking adapter knows no
model code, and no two medrov modules import each other, directly or around a circle (imports inside functions
count: a lazy import is still an arrow)."""

from __future__ import annotations

from tests.stage_deps import stage_deps


def _in(package: str, modules) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def test_the_graph_sees_lazy_and_package_imports():
    graph = stage_deps.import_graph()
    # an import inside a function body (tune imports the tracking adapter lazily)
    assert "medrov.tracking" in graph["medrov.tune"]
    # `from medrov import paths` is an arrow to the module medrov.paths
    assert "medrov.paths" in graph["medrov.tracking.store"]
    assert "medrov.model.train" in stage_deps.reachable(graph, {"medrov.steps"})


def test_tracking_imports_no_model_code():
    graph = stage_deps.import_graph()
    tracking = _in("medrov.tracking", graph)
    assert len(tracking) >= 5, tracking
    for module in tracking:
        seen = stage_deps.reachable(graph, {module})
        assert not _in("medrov.model", seen), f"{module} reaches model code: {_in('medrov.model', seen)}"
        assert not _in("medrov.steps", seen), f"{module} reaches the steps: {_in('medrov.steps', seen)}"


def test_medrov_has_no_import_circle():
    assert stage_deps.cycles(stage_deps.import_graph()) == []


def test_a_circle_is_found():
    assert stage_deps.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert stage_deps.cycles({"a": {"b"}, "b": set()}) == []
