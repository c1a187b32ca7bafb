"""The K fold checkpoints written by train-backbone, checked against the workspace's folds (without torch)."""
from __future__ import annotations

from ..atomic import read_json, sha256_file
from ..data.workspace import Workspace
from ..errors import WorkspaceError


def saved_preprocess(meta: dict, checkpoint) -> dict:
    """The preprocessing saved with a fold checkpoint (in its metadata; older runs only in the .pt file)."""
    if "preprocess" in meta:
        return meta["preprocess"]
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=False)["preprocess"]


def fold_checkpoints(ws: Workspace, backbone: str, k: int, folds_fingerprint: str) -> list[dict]:
    """The metadata of each fold's finished checkpoint; refuses missing, altered or other-fold checkpoints."""
    done = []
    for f in range(k):
        files = ws.fold_files(backbone, f)
        if not files.done.exists() or not files.best.exists():
            raise WorkspaceError(
                f"{backbone} has no finished checkpoint for fold {f} in {files.root}; run "
                f"`train-backbone --backbone {backbone} --folds {k}` first (or `--frozen` for pretrained features)")
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
    now = ws.dataset_fingerprint()
    stale = [f for f, m in enumerate(done) if now is not None and m["identity"]["dataset_fingerprint"] != now]
    if stale:
        raise WorkspaceError(
            f"{backbone}: fold model(s) {stale} were trained on other training labels or images than the data "
            "folder has now; "
            f"retrain them with `train-backbone --backbone {backbone} --folds {k}` (finished folds whose data "
            "did not change are kept)")
    return done
