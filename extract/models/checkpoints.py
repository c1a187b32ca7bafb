"""The K fold checkpoints written by train-backbone: checked against the workspace's folds, and read safely."""
from __future__ import annotations

from genderfusion.files.digests import sha256_file
from genderfusion.files.json_files import read_json

from ..data.workspace import Workspace
from ..errors import WorkspaceError


def read_checkpoint(path) -> dict:
    """A checkpoint written by train-backbone (tensors, numbers, strings, lists and dicts), read with torch's
    weights-only unpickler: a file that holds anything else is refused unread, so loading one runs no code."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise WorkspaceError(f"{path}: not a checkpoint this package reads (it may hold code, or be truncated or "
                             f"damaged: {reason}); delete it and run train-backbone again") from None


def saved_preprocess(meta: dict, checkpoint) -> dict:
    """The preprocessing saved with a fold checkpoint (in its metadata; older runs only in the .pt file)."""
    if "preprocess" in meta:
        return meta["preprocess"]
    return read_checkpoint(checkpoint)["preprocess"]


def fold_checkpoints(ws: Workspace, backbone: str, k: int, folds_fingerprint: str) -> list[dict]:
    """The metadata of each fold's finished checkpoint; refuses missing, altered or other-fold checkpoints."""
    done = []
    for f in range(k):
        files = ws.fold_files(backbone, f)
        if not files.done.exists() or not files.best.exists():
            raise WorkspaceError(
                f"{backbone} has no finished checkpoint for fold {f} in {files.root}; fine-tune it first "
                f"(train-backbone, {k} folds), or take its pretrained features (frozen=True)")
        meta = read_json(files.done)
        actual = sha256_file(files.best)
        if actual != meta["sha256"]:
            raise WorkspaceError(f"{files.best} changed after training (sha256 {actual}, "
                                 f"recorded {meta['sha256']}); retrain with train-backbone")
        theirs = meta["identity"]["folds_fingerprint"]
        if theirs != folds_fingerprint:
            raise WorkspaceError(
                f"{files.best} was trained on another fold assignment (folds fingerprint {theirs}); "
                f"the workspace's folds have fingerprint {folds_fingerprint}. Retrain with train-backbone.")
        done.append(meta)
    now, content = ws.dataset_fingerprint(), ws.content_fingerprint()
    stale = [f for f, m in enumerate(done) if (now is not None and m["identity"]["dataset_fingerprint"] != now)
             or m.get("content_fingerprint") not in (None, content)]  # None: trained before contents were recorded
    if stale:
        raise WorkspaceError(
            f"{backbone}: fold model(s) {stale} were trained on other training labels or images than the data "
            "folder has now; "
            f"fine-tune {backbone} again (train-backbone, {k} folds; finished folds whose data did not change are "
            "kept)")
    return done
