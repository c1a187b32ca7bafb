"""A fitted fusion model as one self-contained file (`export-model`): it predicts from images on another machine,
without the workspace it was trained in.

The file is a zip archive (`.gfm`) of:
    manifest.json   format, package version, the model's sources, the sha256 of every frozen model file it needs
                    from the installed packages, and of every fold tensor file it holds
    model.pkl       the FusionClassifier (heads, recipes, threshold, second stage)
    folds/<backbone>/fold<k>.safetensors + fold<k>.json
                    what fine-tuning changed in each fold model (tensors equal to the pretrained weights, such as
                    dlib's frozen trunk under the face-resnet tops, are left out and read from the package again),
                    and its training config
    card.html       the model card, when the model has one
"""
from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path

from genderfusion.extract.atomic import atomic_path
from genderfusion.extract.data.workspace import Workspace
from genderfusion.extract.errors import WorkspaceError
from genderfusion.extract.sources.base import FINETUNED

FORMAT = "genderfusion-export-v1"
SUFFIX = ".gfm"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frozen_files(recipe: dict) -> dict[str, str]:
    """'<net>:<role>' -> sha256 of each packaged model file a source reads (checked against the published sha256)."""
    from genderfusion.extract.models.face_files import checked_sha256
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


def export_model(clf, out: str | Path, card: Path | None = None) -> dict:
    """Write `clf` (fitted, in its workspace) as one file; returns its manifest plus size."""
    import torch
    from safetensors.torch import save as save_tensors

    clf.check_sources()  # the workspace's checkpoints and model files are the ones the heads were trained on
    ws = Workspace(clf.workdir_)
    manifest = {"format": FORMAT, "genderfusion": _version(), "sources": clf.source_names_, "frozen_files": {},
                "folds": {}, "stages": {str(k): v for k, v in clf.stage_names().items() if k}}
    out = Path(out)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for recipe in clf.recipes_:
                manifest["frozen_files"].update(frozen_files(recipe))
                if recipe["kind"] != FINETUNED or recipe["backbone"] in manifest["folds"]:
                    continue
                backbone, folds = recipe["backbone"], []
                for f, want in enumerate(recipe["checkpoint_sha256"]):
                    path = ws.fold_files(backbone, f).best
                    ckpt = torch.load(path, map_location="cpu", weights_only=False)
                    config = ckpt["identity"]["config"]
                    part, over = _trained_part(backbone, config, ckpt["state_dict"])
                    data = save_tensors({k: v.contiguous() for k, v in part.items()})
                    name = f"folds/{backbone}/fold{f}"
                    z.writestr(f"{name}.safetensors", data)
                    z.writestr(f"{name}.json", json.dumps({"config": config, "checkpoint_sha256": want}))
                    folds.append({"file": f"{name}.safetensors", "sha256": _sha(data), "over_pretrained": over,
                                  "tensors": len(part), "of": len(ckpt["state_dict"])})
                manifest["folds"][backbone] = folds
            z.writestr("model.pkl", pickle.dumps({"format": "export", "model": clf.detached()}))
            if card is not None and card.is_file():
                z.write(card, "card.html")
            z.writestr("manifest.json", json.dumps(manifest, indent=2))
    return {**manifest, "out": str(out), "megabytes": round(out.stat().st_size / 2**20, 2)}


def _version() -> str:
    from genderfusion import __version__

    return __version__


def is_export(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)


def load_export(path: Path):
    """The FusionClassifier of an exported file, after checking its format and that every frozen model file it
    needs is installed with the sha256 it was exported with."""
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            if manifest.get("format") != FORMAT:
                raise ValueError(f"{path}: an exported model of format {manifest.get('format')!r} (genderfusion "
                                 f"{manifest.get('genderfusion')}); this genderfusion {_version()} reads {FORMAT}: "
                                 "export it again with this version")
            obj = pickle.loads(z.read("model.pkl"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable exported model ({type(exc).__name__}: {exc})") from exc
    clf = obj["model"]
    for recipe in clf.recipes_:
        for key, sha in frozen_files(recipe).items():
            if manifest["frozen_files"].get(key) not in (None, sha):
                raise WorkspaceError(f"{path}: the installed {key} has sha256 {sha}, the model was exported with "
                                     f"{manifest['frozen_files'][key]}; install the package version it was made with")
    clf.exported_ = str(Path(path).resolve())
    return clf


def exported_sources(clf, batch_size: int, device: str) -> list:
    """The sources of an exported model: face and frozen ones from the installed packages, fine-tuned ones from the
    fold tensors in the file (each checked against its sha256 in the manifest)."""
    from safetensors.torch import load as load_tensors

    from genderfusion.extract.sources.spec import build_source
    from genderfusion.extract.sources.torch_source import fold_source

    path = Path(clf.exported_)
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        built = []
        for recipe in clf.recipes_:
            if recipe["kind"] != FINETUNED:
                built.append(build_source(recipe, Workspace(path.parent), batch_size, device))
                continue
            folds = manifest["folds"][recipe["backbone"]]
            states = []
            for f, entry in enumerate(folds):
                data = z.read(entry["file"])
                if _sha(data) != entry["sha256"]:
                    raise WorkspaceError(f"{path}: {entry['file']} is damaged (sha256 {_sha(data)}, manifest "
                                         f"{entry['sha256']}); export the model again")
                config = json.loads(z.read(entry["file"].replace(".safetensors", ".json")))["config"]
                states.append((config, load_tensors(data)))
            over = all(entry["over_pretrained"] for entry in folds)
            built.append(fold_source(recipe, states.__getitem__, pretrained_base=over, batch_size=batch_size,
                                     device=device))
    return built


def read_manifest(path: str | Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("manifest.json"))

