"""The package's layers: each module imports only from the layers below it, no import cycles, and a plain
checkout (``PYTHONPATH=.``) imports every module, the Triton kernels included."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "idir_fast"

# layer → the layers its modules may import (besides themselves and the leaf modules below)
LEAVES = {"errors", "version", "_C", "config", "threads"}  # _C: the compiled extension; config: the environment
ALLOWED = {
    "core": set(),
    "kernels": {"core", "ops"},
    "ops": {"core"},
    "backends": {"core", "ops", "kernels"},
    "environment": set(),
    "memory": {"core"},
    "schedule": set(),
    "settings": {"core", "ops", "backends", "kernels", "schedule"},
    "io": {"core", "memory"},
    "data": {"core", "io"},
    "optim": {"core", "ops", "kernels", "backends", "settings", "io", "schedule"},
    "transform": {"core", "ops", "io", "memory"},
    "consistency": {"core", "transform"},
    "record": {"settings", "io", "core", "backends", "kernels", "schedule"},
    "registration": {"core", "ops", "io", "memory", "transform", "consistency", "record", "settings"},
    "api": {"core", "ops", "kernels", "backends", "settings", "optim", "io", "registration", "environment",
            "schedule", "memory", "transform", "consistency", "record"},
    "apps": {"core", "ops", "kernels", "backends", "settings", "optim", "io", "registration", "environment", "api",
             "data", "apps", "schedule", "memory", "transform", "consistency", "record", "apply"},
    "apply": {"core", "io", "registration", "transform", "consistency", "record", "settings", "memory", "ops",
              "backends", "kernels", "schedule"},
    "compat": {"core", "io", "api", "data", "errors", "registration", "settings"},
    "__init__": {"api", "apps", "registration", "settings", "environment", "apply", "compat"},
    "__main__": {"apps"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """Every idir_fast module a file imports (module level and inside functions), as dotted names."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("idir_fast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("idir_fast"):
                continue
            for alias in node.names:  # "from . import reference" names a module
                candidate = f"{mod}.{alias.name}"
                sub = ROOT / Path(*candidate.split("."))
                is_module = sub.with_suffix(".py").exists() or sub.is_dir() or alias.name == "_C"
                out.add(candidate if is_module else mod)
    return out - {me}


def _layer(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _graph():
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    return {_module_name(p): _imports(p) for p in files}


def test_every_module_imports_only_from_lower_layers():
    bad = []
    for module, imports in _graph().items():
        layer = _layer(module)
        assert layer in ALLOWED or layer in LEAVES, f"{module}: layer {layer!r} is not in the architecture table"
        for target in imports:
            t = _layer(target)
            if t == layer or t in LEAVES or t in ALLOWED.get(layer, set()):
                continue
            bad.append(f"{module} imports {target} ({layer} → {t})")
    assert not bad, "layering violations:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    # package __init__ files re-export their children: the edge parent → child is not a dependency of the child
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "active"
        stack.append(m)
        for t in graph.get(m, ()):
            if t.startswith(m + "."):
                continue
            if state.get(t) == "active":
                cycles.append(stack[stack.index(t):] + [t])
            elif t in graph and t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_plain_checkout_imports_every_module(tmp_path):
    """A copy of the tracked source tree, with nothing installed from it, imports every module by PYTHONPATH."""
    pytest.importorskip("triton")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "idir_fast"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for f in files:
        dst = tmp_path / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst)
    code = ("import importlib, pkgutil, idir_fast, idir_fast.kernels.siren_streams\n"
            f"assert idir_fast.__file__.startswith({str(tmp_path)!r}), idir_fast.__file__\n"
            "names = [m.name for m in pkgutil.walk_packages(idir_fast.__path__, 'idir_fast.')]\n"
            "[importlib.import_module(n) for n in names]\n"
            "print(len(names), 'modules')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[0]) >= 30


def test_top_level_kernels_entry_points_at_the_package_kernels():
    """The repository's top-level ``kernels`` (the layout the user asked for) is the package's Triton folder."""
    top = ROOT / "kernels"
    assert top.is_symlink() and top.resolve() == (PACKAGE / "kernels").resolve()
