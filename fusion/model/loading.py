"""The one way a model name is resolved and its file loaded: FusionClassifier.load calls load_model."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from genderfusion.extract.data.workspace import Workspace
from genderfusion.extract.errors import WorkspaceError

from genderfusion.fusion.model import model_file, shipped
from genderfusion.fusion.model.export import MODEL_ENTRY, check_export, is_export, read_export

log = logging.getLogger("genderfusion")
WORKSPACE_MODEL = "fusion"  # the model a workspace predicts with when none is named
MODEL_SUFFIXES = (".safetensors", ".gfm", ".pkl")  # .pkl: to refuse an earlier version's pickle by name


def _is_path(name: str) -> bool:
    """A model file or folder rather than a name under <workdir>/heads/: an existing file, or a name with a folder
    or a model file's suffix."""
    return Path(name).is_file() or Path(name).suffix in MODEL_SUFFIXES or "/" in name or "\\" in name


def load_model(cls, name_or_path: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None):
    """A model of class `cls` (FusionClassifier):
    - None: the workspace's model `fusion` where it has one, else the shipped model (said in one log line);
    - "default": the shipped model (no workspace; FaceRes fetched once where it is missing);
    - a name under <workdir>/heads/ (default workspace data);
    - a model file, the folder holding one, or an exported .gfm.
    Loading runs no code from the file."""
    if name_or_path is None:
        ws = Workspace(workdir or "data")
        if ws.head_model(WORKSPACE_MODEL).exists():
            return load_model(cls, WORKSPACE_MODEL, workdir)
        clf = load_model(cls, shipped.NAME)
        log.warning("no model named, and no model `%s` in the workspace %s: using %s", WORKSPACE_MODEL, ws.root,
                    shipped.describe())
        return clf
    path, workdir = model_path(name_or_path, workdir)
    if path == shipped.default_dir() / shipped.FILE:
        shipped.ensure_files(shipped.about()["sources"])  # before loading: it checks the files
    return _from_path(cls, path, workdir)


def model_path(name_or_path: str | os.PathLike, workdir: str | os.PathLike | None = None
               ) -> tuple[Path, str | os.PathLike | None]:
    """The model file (or folder) a name or path means, and the workspace to read it with."""
    name = str(name_or_path)
    if name == shipped.NAME and not Path(name).exists():
        return shipped.default_path(), None
    if not _is_path(name):
        workdir = "data" if workdir is None else workdir
        return Workspace(workdir).head_model(name), workdir
    return Path(name), workdir


def _from_path(cls, path: Path, workdir: str | os.PathLike | None):
    """A model file (or the folder holding one, or an exported .gfm). Its workspace is `workdir`, else the one it was
    trained in, else - for a workspace that was moved - the one holding the model file
    (<workdir>/heads/<name>/model.safetensors)."""
    if path.is_dir():
        if not (path / model_file.FILE_NAME).exists() and (path / model_file.LEGACY_NAME).exists():
            raise model_file.legacy_error(path / model_file.LEGACY_NAME, "a pickle")
        path = path / model_file.FILE_NAME
    if not path.exists():
        if (path.parent / model_file.LEGACY_NAME).exists() and path.name == model_file.FILE_NAME:
            raise model_file.legacy_error(path.parent / model_file.LEGACY_NAME, "a pickle")
        raise FileNotFoundError(f"{path}: no fusion model; train one with `train-head`")
    if is_export(path):  # a self-contained file: predicts from images; its workspace only for cached rows
        data, manifest = read_export(path)
        clf = check_export(cls.from_bytes(data, f"{path}:{MODEL_ENTRY}"), manifest, path)
        clf.workdir_ = None if workdir is None else str(Path(workdir).resolve())
        return clf
    clf = cls.from_bytes(model_file.read_file(path), path)
    own = path.resolve().parents[2] if len(path.resolve().parents) > 2 else path.resolve().parent
    if workdir is not None:
        clf.workdir_ = str(Path(workdir).resolve())
    elif clf.workdir_ is None or not (Path(clf.workdir_) / "features").is_dir():
        if not (own / "features").is_dir():
            raise WorkspaceError(f"{path}: its workspace {clf.workdir_} is gone and {own} holds no features; "
                                 "name the workspace: FusionClassifier.load(path, workdir=...)")
        clf.workdir_ = str(own)
    elif Path(clf.workdir_) != own:  # a model file away from its workspace: say which features it will use
        log.warning("%s: uses the workspace it was trained in, %s (name another workspace to use its features)",
                    path, clf.workdir_)
    return clf
