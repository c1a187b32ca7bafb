"""The K fold checkpoints written by train-backbone, checked against the workspace's folds (without torch)."""
from __future__ import annotations

from pathlib import Path

from .atomic import read_json, sha256_file
from .errors import WorkspaceError


def fold_checkpoints(model_dir: Path, backbone: str, k: int, folds_fingerprint: str) -> list[dict]:
    """The metadata of each fold's finished checkpoint; refuses missing, altered or other-fold checkpoints."""
    done = []
    for f in range(k):
        meta_path = model_dir / f"fold{f}.json"
        if not meta_path.exists() or not (model_dir / f"fold{f}.pt").exists():
            raise WorkspaceError(
                f"{backbone} has no finished checkpoint for fold {f} in {model_dir}; run "
                f"`train-backbone --backbone {backbone} --folds {k}` first (or `--frozen` for pretrained features)")
        meta = read_json(meta_path)
        actual = sha256_file(model_dir / f"fold{f}.pt")
        if actual != meta["sha256"]:
            raise WorkspaceError(f"{model_dir}/fold{f}.pt changed after training (sha256 {actual}, "
                                 f"recorded {meta['sha256']}); retrain with train-backbone")
        theirs = meta["identity"]["folds_fingerprint"]
        if theirs != folds_fingerprint:
            raise WorkspaceError(
                f"{model_dir}/fold{f}.pt was trained on another fold assignment (folds fingerprint {theirs}); "
                f"the workspace's folds have fingerprint {folds_fingerprint}. Retrain with train-backbone.")
        done.append(meta)
    return done
