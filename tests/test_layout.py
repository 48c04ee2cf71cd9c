"""The code's layout: which package may import what, so the layers stay apart as the code grows."""

import ast
import re
import subprocess
import sys

from stack import REPO

PACKAGES = ("bench", "common", "model", "model_tools", "stack", "tests", "web", "worker")


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """Every project module -> the project modules it imports (at any depth of its code)."""
    modules = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from package import module" imports the module; "from module import name" the module.
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            imported |= {candidate for candidate in candidates if candidate in modules}
        graph[name] = imported - {name}
    return graph


def test_no_import_cycles():
    graph = project_imports()
    visiting, done, cycles = [], set(), []

    def visit(module):
        if module in done:
            return
        if module in visiting:
            cycles.append(visiting[visiting.index(module) :] + [module])
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            # A package imports its own submodules only to re-export them; that is not a cycle of layers.
            if not imported.startswith(module + "."):
                visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_benchmarks_and_tools_import_nothing_from_tests():
    graph = project_imports()
    offenders = {
        module: sorted(name for name in imported if name.split(".")[0] == "tests")
        for module, imported in graph.items()
        if module.split(".")[0] != "tests"
    }
    assert not {module: names for module, names in offenders.items() if names}


def test_batcher_and_model_core_import_neither_torch_nor_transformers():
    probe = "import sys, worker.batcher, model.core; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_web_and_worker_never_import_the_offline_tools():
    graph = project_imports()
    for module, imported in graph.items():
        if module.split(".")[0] in ("common", "model", "web", "worker"):
            assert not [name for name in imported if name.startswith("model_tools")], module


def final_stage(dockerfile: str) -> str:
    return dockerfile.rsplit("\nFROM ", 1)[1]


def test_worker_image_holds_no_training_code():
    """The served image copies the model package and its weights, never model_tools (train, export, ...)."""
    final = final_stage((REPO / "Dockerfile.worker").read_text())
    copies = [line for line in final.splitlines() if line.startswith("COPY ")]
    assert copies, "the worker image copies no code"
    assert not [line for line in copies if "model_tools" in line or "train" in line]
    assert not (REPO / "model" / "train.py").exists()


def test_web_image_copies_whole_packages_and_no_model_code():
    final = final_stage((REPO / "Dockerfile.web").read_text())
    sources = [line.split()[1] for line in final.splitlines() if line.startswith("COPY ") and "--from" not in line]
    assert sorted(sources) == ["common/", "web/"]


# The views only map outcomes to HTTP; the protocols (web.scoring, web.bulk_jobs) talk to the stores.
VIEWS = ("web.predict", "web.jobs")


def test_views_only_map_outcomes_to_http():
    graph = project_imports()
    for view in VIEWS:
        source = (REPO / (view.replace(".", "/") + ".py")).read_text()
        assert ".stores" not in source, f"{view} reaches the stores: that is a protocol's work"
        # No view imports another: what they share lives in web.responses.
        assert not graph[view] & set(VIEWS) - {view}, view
    for module, imported in graph.items():
        if module.startswith("web.") and module not in VIEWS:
            assert not imported & set(VIEWS), f"{module} imports a view"


def test_every_redis_key_is_named_in_common_store_keys():
    """Outside common.store.keys no module spells the prefix: keys.py is the one list of keys."""
    for package in ("common", "web", "worker", "bench"):
        for path in (REPO / package).rglob("*.py"):
            if path == REPO / "common" / "store" / "keys.py":
                continue
            source = path.read_text()
            assert "sentiment:" not in source and not re.search(r"\bPREFIX\b", source), path.relative_to(REPO)


def test_the_budget_scripts_and_the_record_scripts_have_one_owner_each():
    """backpressure owns the budgets' Lua; the job records' scripts compose it, never the other way round."""
    graph = project_imports()
    assert "common.store.jobs" not in graph["common.store.backpressure"]
    assert "common.store.backpressure" in graph["common.store.jobs"]


def test_test_helpers_come_from_one_place():
    """The launcher's pieces come from ``stack`` itself, never through a re-exporting test module."""
    assert not (REPO / "tests" / "support.py").exists()
    graph = project_imports()
    for module, imported in graph.items():
        if module.startswith("tests."):
            assert {name for name in imported if name.startswith("tests.")} <= {"tests.made_up_models"}, module
