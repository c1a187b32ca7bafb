"""The import rules of the layout table (docs/layout.md), read from the source (ast), so that a violation fails CI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NS = "genderfusion"  # the import namespace; the folders extract/, heads/, fusion/ are mapped under it
PACKAGES = ("extract", "heads", "fusion")
SHARED = (f"{NS}.files", f"{NS}.option_errors")  # what every package may import; they import none
CLI = f"{NS}.cli"  # the console scripts: they may import anything, and nothing imports them


def _ranks(package: str, ranks: dict[str, int]) -> dict[str, int]:
    return {f"{NS}.{package}.{m}": rank for m, rank in ranks.items()}


# each package's layers, lowest first: a module imports only from its own layer or lower ones
EXTRACT_LAYERS = _ranks("extract", {"errors": 0, "locks": 0, "workers": 0, "data": 1, "models": 2, "faces": 2,
                                    "sources": 3, "cache": 4, "distributed": 5})
FUSION_LAYERS = _ranks("fusion", {"photos": 0, "model": 1, "predict": 2, "training": 2, "audit": 2, "serve": 3})
LAYERS = {**EXTRACT_LAYERS, **FUSION_LAYERS}
# the one import that goes up a layer, inside a method: FusionClassifier.predict_frame, the user's entry point to
# rows of faces, is a thin call into predict/
UPWARD = {(f"{NS}.fusion.model.classifier", f"{NS}.fusion.predict.options"),
          (f"{NS}.fusion.model.classifier", f"{NS}.fusion.predict.rows")}
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
    for prefix, rank in LAYERS.items():
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
            if mod.startswith(SHARED) and part(name) in ("extract", "heads", "fusion", "cli"):
                found.append(f"{where}:{line}: the shared {mod} imports {name}")
            if name.startswith(CLI) and not mod.startswith(CLI) and part(mod) != "__main__":
                found.append(f"{where}:{line}: library module {mod} imports the console scripts' {name}")
            mine, theirs = layer_of(mod), layer_of(name)
            same_package = part(mod) == part(name)
            if same_package and mine is not None and theirs is not None and theirs > mine \
                    and (mod, name) not in UPWARD:
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


@pytest.mark.parametrize("start", [f"{NS}.extract.cache.api", f"{CLI}.extract_commands", f"{NS}.extract.cache.format"])
def test_the_cache_hit_path_imports_no_torch(start):
    """A cache hit runs cli.extract_commands -> extract.cache.api at module level; torch only ever comes in a
    function."""
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


def test_fusion_layers_catch_an_upward_import_planted_in_the_real_tree(tmp_path):
    """The real packages, copied, with one import planted in each direction that the fusion table forbids."""
    import shutil

    for pkg in (NS, *PACKAGES):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "default"))
    assert violations(tmp_path) == []  # the copy is as clean as the tree
    decode = tmp_path / "fusion/photos/decode.py"
    decode.write_text(decode.read_text() + "\n\ndef planted():\n    from genderfusion.fusion.model import classifier\n")
    rows = tmp_path / "fusion/predict/rows.py"
    rows.write_text(rows.read_text() + "\nfrom genderfusion.fusion.serve.app import create_app\n")
    shared = tmp_path / "genderfusion/files/atomic.py"
    shared.write_text(shared.read_text() + "\nfrom genderfusion.extract.errors import DataError\n")
    found = violations(tmp_path)
    assert any(v.startswith("fusion/photos/decode.py:") and f"{NS}.fusion.photos.decode (layer 0) imports the higher "
               f"layer {NS}.fusion.model.classifier (1)" in v for v in found), found
    assert any(v.startswith("fusion/predict/rows.py:") and f"higher layer {NS}.fusion.serve.app (3)" in v for v in found)
    assert any(f"the shared {NS}.files.atomic imports {NS}.extract.errors" in v for v in found)
    assert len(found) == 3, found
