"""A fitted fusion model as one self-contained file (`export-model`): it predicts from images on another machine,
without the workspace it was trained in. Like the model file inside it, it is data: loading it runs no code from it.

The file is a zip archive (`.gfm`) of:
    manifest.json   format, package version, the model's sources, the sha256 of every frozen model file it needs
                    from the installed packages, each fine-tuned source's fold entries with their training config,
                    and the size and sha256 of every entry
    model.safetensors
                    the FusionClassifier (fusion.model.model_file: JSON structure and safetensors arrays)
    folds/<backbone>/fold<k>.safetensors
                    what fine-tuning changed in each fold model (tensors equal to the pretrained weights, such as
                    dlib's frozen trunk under the face-resnet tops, are left out and read from the package again)
    card.html       the model card, when the model has one
Entries are read by name and never extracted; names the manifest does not list are ignored; an entry is refused
before it is read when its declared size is beyond MAX_ENTRY (MAX_MANIFEST for the manifest) or its compression
ratio beyond MAX_RATIO, and after it is read when its sha256 is not the manifest's.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from genderfusion.files.atomic import atomic_path
from genderfusion.files.json_files import loads
from genderfusion.files.paths import special_kind
from genderfusion.extract.data.workspace import Workspace
from genderfusion.extract.errors import WorkspaceError
from genderfusion.extract.sources.base import FINETUNED

from genderfusion.fusion.model import model_file
from genderfusion.fusion.model.model_file import ModelFileError, one_line

FORMAT = "genderfusion-export-v2"
LEGACY_FORMATS = ("genderfusion-export-v1",)  # its model entry was a pickle
SUFFIX = ".gfm"
MODEL_ENTRY = "model.safetensors"
MAX_MANIFEST = 2**20
MAX_ENTRY = model_file.MAX_BYTES
MAX_RATIO = 100  # deflate of tensors gives about 1.1, of JSON about 5


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frozen_files(recipe: dict) -> dict[str, str]:
    """'<net>:<role>' -> sha256 of each packaged model file a source reads (checked against the published sha256)."""
    from genderfusion.extract.faces.face_files import checked_sha256
    from genderfusion.extract.sources.preflight import face_nets

    return {f"{net}:{role}": sha for net in face_nets(recipe["spec"]) for role, sha in checked_sha256(net).items()}


def _trained_part(backbone: str, config: dict, state: dict) -> tuple[dict, bool]:
    """The tensors fine-tuning changed, and whether they are laid over the pretrained weights (a backbone without
    packaged weights keeps every tensor)."""
    import torch

    from genderfusion.extract.models.backbone import create
    from genderfusion.extract.models.registry import lookup

    if lookup(backbone).default_weights is None:
        return state, False
    base = create(backbone, config["img_size"], dropout=config["dropout"]).state_dict()
    return {k: v for k, v in state.items()
            if k not in base or base[k].shape != v.shape or not torch.equal(base[k], v)}, True


def _entry(name: str, compress: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    """An entry with a fixed date: the same model gives the same file."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress
    return info


def export_model(clf, out: str | Path, card: Path | None = None) -> dict:
    """Write `clf` (fitted, in its workspace) as one file; returns its manifest plus size."""
    from safetensors.torch import save as save_tensors

    from genderfusion.extract.models.checkpoints import read_checkpoint

    if clf.exported_ is not None:
        raise ModelFileError(f"{clf.exported_} is an exported model already; copy the file as it is")
    clf.check_sources()  # the workspace's checkpoints and model files are the ones the heads were trained on
    ws = Workspace(clf.workdir_)
    manifest = {"format": FORMAT, "genderfusion": _version(), "sources": clf.source_names_, "frozen_files": {},
                "folds": {}, "stages": {str(k): v for k, v in clf.stage_names().items() if k}, "entries": {}}
    out = Path(out)

    def put(z: zipfile.ZipFile, name: str, data: bytes, compress: int = zipfile.ZIP_DEFLATED) -> None:
        z.writestr(_entry(name, compress), data)
        manifest["entries"][name] = {"bytes": len(data), "sha256": _sha(data)}

    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for recipe in clf.recipes_:
                manifest["frozen_files"].update(frozen_files(recipe))
                if recipe["kind"] != FINETUNED or recipe["backbone"] in manifest["folds"]:
                    continue
                backbone, folds = recipe["backbone"], []
                for f, want in enumerate(recipe["checkpoint_sha256"]):
                    ckpt = read_checkpoint(ws.fold_files(backbone, f).best)
                    config = ckpt["identity"]["config"]
                    part, over = _trained_part(backbone, config, ckpt["state_dict"])
                    name = f"folds/{backbone}/fold{f}.safetensors"
                    # stored: trained weights deflate by under 10 %, and a stored entry reads several times faster
                    put(z, name, save_tensors({k: v.contiguous() for k, v in part.items()}), zipfile.ZIP_STORED)
                    folds.append({"file": name, "config": config, "checkpoint_sha256": want, "over_pretrained": over,
                                  "tensors": len(part), "of": len(ckpt["state_dict"])})
                manifest["folds"][backbone] = folds
            put(z, MODEL_ENTRY, model_file.dumps(clf.detached()))
            if card is not None and card.is_file():
                put(z, "card.html", card.read_bytes())
            z.writestr(_entry("manifest.json"), json.dumps(manifest, indent=2))
    return {**manifest, "out": str(out), "megabytes": round(out.stat().st_size / 2**20, 2)}


def _version() -> str:
    from genderfusion import __version__

    return __version__


def is_export(path: Path) -> bool:
    """A .gfm file, or any zip archive (read as one, so that a damaged one gets the exported model's errors)."""
    return path.is_file() and (path.suffix == SUFFIX or zipfile.is_zipfile(path))


def _read(z: zipfile.ZipFile, path: Path, name: str, manifest: dict | None, limit: int = MAX_ENTRY) -> bytes:
    """An entry's bytes, refused before reading when missing or beyond the size bounds, and after when its sha256
    is not the manifest's (manifest None: the manifest itself)."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise ModelFileError(f"{path}: the entry {name} is missing; export the model again") from None
    if info.file_size > limit or (info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
        raise ModelFileError(f"{path}: the entry {name} declares {info.file_size} bytes ({info.compress_size} "
                             f"compressed), beyond the bound of {limit} bytes and a ratio of {MAX_RATIO}; not read")
    with z.open(info) as fh:
        data = fh.read(limit + 1)
    if manifest is not None and _sha(data) != manifest["entries"][name]["sha256"]:
        raise ModelFileError(f"{path}: the entry {name} is damaged (sha256 {_sha(data)}, manifest "
                             f"{manifest['entries'][name]['sha256']}); export the model again")
    return data


def _check_manifest(m, path: Path) -> dict:
    """The manifest, after checking its format and the shape of what it names."""
    if not isinstance(m, dict):
        raise ModelFileError(f"{path}: manifest.json is not an object; export the model again")
    if m.get("format") in LEGACY_FORMATS:
        raise model_file.legacy_error(path, "its model entry is a pickle")
    if m.get("format") != FORMAT:
        raise ModelFileError(f"{path}: an exported model of format {m.get('format')!r} (genderfusion "
                             f"{m.get('genderfusion')}); this genderfusion {_version()} reads {FORMAT}: export it "
                             "again with this version")
    entries, folds, frozen = m.get("entries"), m.get("folds"), m.get("frozen_files")
    ok = (isinstance(entries, dict) and MODEL_ENTRY in entries
          and all(isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in entries.values())
          and isinstance(frozen, dict) and all(isinstance(v, str) for v in frozen.values())
          and isinstance(folds, dict) and all(
              isinstance(v, list) and v and all(isinstance(f, dict) and f.get("file") in entries
                                                and isinstance(f.get("config"), dict) for f in v)
              for v in folds.values()))
    if not ok:
        raise ModelFileError(f"{path}: manifest.json lacks its entries, frozen files or folds, or names a fold "
                             "file it does not list; export the model again")
    unsafe = [n for n in entries if n.startswith("/") or ".." in n.split("/") or "\\" in n]
    if unsafe:
        raise ModelFileError(f"{path}: manifest.json lists the entry {unsafe[0]!r}, not a plain name inside the "
                             "archive; not read")
    return m


def _manifest(z: zipfile.ZipFile, path: Path) -> dict:
    """The archive's manifest, checked, in an archive whose every name is there once (a second entry of a name
    would be the one read, unlike the one the manifest describes)."""
    seen: set[str] = set()
    for name in z.namelist():
        if name in seen:
            raise ModelFileError(f"{path}: the archive holds the entry {name} twice; not read")
        seen.add(name)
    raw = _read(z, path, "manifest.json", None, MAX_MANIFEST)
    try:
        parsed = loads(raw, "manifest.json", MAX_MANIFEST)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return _check_manifest(parsed, path)


def read_export(path: Path) -> tuple[bytes, dict]:
    """The model entry's bytes and the manifest of an exported file, after checking the manifest and the size and
    sha256 of every entry it lists."""
    kind = special_kind(path)
    if kind is not None:
        raise ModelFileError(f"{path}: {kind}, not a model file; not read")
    try:
        with zipfile.ZipFile(path) as z:
            manifest = _manifest(z, path)
            for name in manifest["entries"]:
                _read(z, path, name, manifest)
            return _read(z, path, MODEL_ENTRY, manifest), manifest
    except ModelFileError:
        raise
    except Exception as exc:  # zipfile and zlib raise many types for damaged archives
        raise ModelFileError(f"{path}: not a readable exported model ({one_line(exc)}); export it again") from None


def check_export(clf, manifest: dict, path: Path):
    """`clf`, the model of an exported file, marked as exported after checking that the manifest's folds are its
    folds and that every frozen model file it needs is installed with the sha256 it was exported with."""
    for recipe in clf.recipes_:
        if recipe["kind"] == FINETUNED:
            have, want = len(manifest["folds"].get(recipe["backbone"], [])), len(recipe["checkpoint_sha256"])
            if have != want:
                raise ModelFileError(f"{path}: the manifest holds {have} fold(s) of {recipe['backbone']}, the model "
                                     f"has {want}; export the model again")
        for key, sha in frozen_files(recipe).items():
            if manifest["frozen_files"].get(key) not in (None, sha):
                raise WorkspaceError(f"{path}: the installed {key} has sha256 {sha}, the model was exported with "
                                     f"{manifest['frozen_files'][key]}; install the package version it was made with")
    clf.exported_ = str(Path(path).resolve())
    return clf


def fold_states(clf) -> dict[str, tuple[bool, list[tuple[dict, dict]]]]:
    """backbone -> (laid over the pretrained weights?, [(training config, tensors)] of each fold), from the exported
    file (each entry checked again)."""
    from safetensors.torch import load as load_tensors

    path = Path(clf.exported_)
    with zipfile.ZipFile(path) as z:
        manifest = _manifest(z, path)
        return {backbone: (all(f["over_pretrained"] for f in folds),
                           [(f["config"], load_tensors(_read(z, path, f["file"], manifest))) for f in folds])
                for backbone, folds in manifest["folds"].items()}


def exported_sources(clf, batch_size: int, device: str) -> list:
    """The sources of an exported model: face and frozen ones from the installed packages, fine-tuned ones from the
    fold tensors in the file."""
    from genderfusion.extract.sources.spec import build_source
    from genderfusion.extract.sources.torch_source import fold_source

    folds = fold_states(clf)
    built = []
    for recipe in clf.recipes_:
        if recipe["kind"] != FINETUNED:
            built.append(build_source(recipe, Workspace(Path(clf.exported_).parent), batch_size, device))
            continue
        over, states = folds[recipe["backbone"]]
        built.append(fold_source(recipe, states.__getitem__, pretrained_base=over, batch_size=batch_size,
                                 device=device))
    return built


def add_probe(clf, path: str | Path) -> dict:
    """Rewrite the exported model `clf` was loaded from (made before models stored their probe features:
    fusion.model.probe) with them, computed by the networks it names; every other entry is kept as it is."""
    path = Path(path)
    if clf.probe_ is not None:
        return {"out": str(path), "changed": False}
    clf.fit_probe()
    with zipfile.ZipFile(path) as z:
        manifest = _manifest(z, path)
        entries = [(info, z.read(info)) for info in z.infolist() if info.filename != "manifest.json"]
    data = model_file.dumps(clf)
    manifest["entries"][MODEL_ENTRY] = {"bytes": len(data), "sha256": _sha(data)}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as z:
            for info, old in entries:
                z.writestr(_entry(info.filename, info.compress_type), data if info.filename == MODEL_ENTRY else old)
            z.writestr(_entry("manifest.json"), json.dumps(manifest, indent=2))
    return {"out": str(path), "changed": True, "probe_widths": [int(p.shape[-1]) for p in clf.probe_]}


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    with zipfile.ZipFile(path) as z:
        return _manifest(z, path)
