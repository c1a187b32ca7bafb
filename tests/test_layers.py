"""The import rules of the layout table (docs/layout.md), read from the source (ast), so that a violation fails CI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NS = "genderfusion"  # the import namespace; the folders extract/, heads/, fusion/ are mapped under it
PACKAGES = ("extract", "heads", "fusion")
# extract's layers, lowest first: a module imports only from its own layer or lower ones
EXTRACT_LAYERS = {f"{NS}.extract.{m}": rank for m, rank in
                  {"errors": 0, "atomic": 0, "workers": 0, "data": 1, "models": 2, "faces": 2, "sources": 3, "cache": 4, "distributed": 5,
                   "cli": 5}.items()}
TORCH = {"torch", "torchvision", "timm"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] in PACKAGES:
        parts.insert(0, NS)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str, root: Path) -> Path:
    """The file a project module would live in (it may not exist)."""
    parts = name.split(".")
    if parts[:1] == [NS] and parts[1:2] and parts[1] in PACKAGES:
        parts = parts[1:]
    return (root / Path(*parts)).with_suffix(".py")


def part(name: str) -> str:
    """The project package of a module name (extract, heads, fusion), else its top-level name."""
    parts = name.split(".")
    return parts[1] if parts[0] == NS and len(parts) > 1 else parts[0]


def imports(path: Path, root: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file; top_level_only skips imports inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{a.name}"
                is_module = module_path(sub, root).exists()
                out.append((sub if is_module else base, node.lineno))
    return out


def project_files(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in (NS, *PACKAGES) if (root / pkg).is_dir()
            for p in (root / pkg).rglob("*.py")}


def layer_of(mod: str) -> int | None:
    for prefix, rank in EXTRACT_LAYERS.items():
        if mod == prefix or mod.startswith(prefix + "."):
            return rank
    return None


def violations(root: Path) -> list[str]:
    """Every broken import rule in the project under root, one line each."""
    found = []
    for mod, path in project_files(root).items():
        where = f"{path.relative_to(root)}"
        for name, line in imports(path, root):
            if part(mod) == "extract" and part(name) in ("heads", "fusion"):
                found.append(f"{where}:{line}: extract imports {name}")
            if part(mod) == "heads" and part(name) in ("torchvision", "PIL", "extract", "fusion"):
                found.append(f"{where}:{line}: heads imports {name}")
            mine, theirs = layer_of(mod), layer_of(name)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{where}:{line}: {mod} (layer {mine}) imports the higher layer {name} ({theirs})")
    return found


def import_closure(root: Path, start: str) -> set[str]:
    """Every module (project and third-party tops) imported when `start` is imported (module-level imports only)."""
    files = project_files(root)
    seen, todo = set(), [start]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parents = [".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)]
        todo += [p for p in parents if p in files]
        if mod in files:
            todo += [name for name, _ in imports(files[mod], root, top_level_only=True)]
    return seen


def cycles(root: Path) -> list[list[str]]:
    """Import cycles among project modules, counting imports inside functions too."""
    files = project_files(root)
    graph = {m: {n for n, _ in imports(p, root) if n in files and n != m} for m, p in files.items()}
    found, state = [], {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_layout_rules_hold():
    assert violations(ROOT) == []


def test_no_import_cycles():
    assert cycles(ROOT) == []


@pytest.mark.parametrize("start", [f"{NS}.extract.cache.api", f"{NS}.extract.cli", f"{NS}.extract.cache.format"])
def test_the_cache_hit_path_imports_no_torch(start):
    """A cache hit runs extract.cli -> extract.cache.api at module level; torch only ever comes in a function."""
    assert not {m.split(".")[0] for m in import_closure(ROOT, start)} & TORCH


def test_the_checker_finds_each_kind_of_violation(tmp_path):
    """The rules above can fail: a tree that breaks each of them is reported, line by line."""
    files = {
        "extract/__init__.py": "", "extract/data/__init__.py": "", "extract/cache/__init__.py": "",
        "extract/data/a.py": "from ..cache import b\n",  # a lower layer imports a higher one
        "extract/cache/b.py": "import torch\nfrom ..data import a\n",
        "extract/cli.py": "from .cache import b\n\ndef f():\n    import genderfusion.fusion.x\n",  # extract imports fusion
        "heads/__init__.py": "", "heads/h.py": "from PIL import Image\n",
        "fusion/__init__.py": "", "fusion/x.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path)
    assert any("extract/data/a.py:1" in v and f"higher layer {NS}.extract.cache.b" in v for v in found)
    assert any(f"extract/cli.py:4: extract imports {NS}.fusion.x" in v for v in found)
    assert any("heads/h.py:1: heads imports PIL" in v for v in found)
    assert {"torch", f"{NS}.extract.cache.b"} <= import_closure(tmp_path, f"{NS}.extract.cli")
    assert [f"{NS}.extract.cache.b", f"{NS}.extract.data.a", f"{NS}.extract.cache.b"] in cycles(tmp_path)
