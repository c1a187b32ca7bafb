"""`audit-labels` as a library call: training faces whose label is in doubt, from out-of-fold fused probabilities
and duplicate images (exact by pixel digest, near by face descriptor), written to <workdir>/audit/."""
from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from genderfusion.files.atomic import write_json, write_text
from genderfusion.files.json_files import read_json
from genderfusion.option_errors import option_error
from genderfusion.extract.cache import format as fc
from genderfusion.extract.data.dataset import CompetitionData
from genderfusion.extract.data.pixel_hashes import cached_pixel_hashes
from genderfusion.extract.data.workspace import Workspace
from genderfusion.extract.errors import WorkspaceError

from genderfusion.fusion.audit.contact_sheet import contact_sheet
from genderfusion.fusion.audit.duplicates import Duplicates, find_duplicates, members

LOG = logging.getLogger("genderfusion").info  # progress lines, unless the caller passes its own `log`

DESCRIPTORS = ("dlib-face-flip", "dlib-face")  # default face descriptor for near duplicates, first one cached
WEIGHTS = {"exact duplicate with another label": 1.0, "near duplicate with another label": 0.5}


def oof_probabilities(ws: Workspace, model: str, ids: list[str]) -> tuple[np.ndarray, str]:
    """P(female) of every training id from the saved model's cross-validation (models that never trained on the
    row), and the method they come from."""
    out = ws.head_dir(model)
    if not (out / "cv_probs.npz").exists() or not (out / "report.json").exists():
        raise WorkspaceError(f"{out}: no trained fusion model with out-of-fold probabilities; train a model named "
                             f"{model} in the workspace {ws.root} first (train-head)")
    method = read_json(out / "report.json")["best_method"]
    with np.load(out / "cv_probs.npz", allow_pickle=False) as z:
        pos = {i: n for n, i in enumerate(z["ids"].tolist())}
        probs = z[method]
    missing = [i for i in ids if i not in pos]
    if missing:
        raise WorkspaceError(f"model {model} has out-of-fold probabilities for {len(ids) - len(missing)} of "
                             f"{len(ids)} training rows (ids such as {missing[:5]} are missing: skipped at extraction "
                             "or another dataset); the audit needs every row")
    return probs[[pos[i] for i in ids]].astype(np.float64), method


def descriptor_features(ws: Workspace, ids: list[str], name: str | None) -> tuple[np.ndarray, str]:
    """The cached face descriptor of every training id (name None: the first cached of DESCRIPTORS)."""
    if name is None:
        name = next((n for n in DESCRIPTORS if ws.features_path(n).exists()), None)
        if name is None:
            raise WorkspaceError(f"no face descriptor cached in {ws.root / 'features'} (looked for "
                                 f"{', '.join(DESCRIPTORS)}); extract the frozen source dlib-face first, or name "
                                 "another cached descriptor")
    fs = fc.load(ws.features_path(name))
    pos = {i: n for n, i in enumerate(fs.train.ids.tolist())}
    missing = [i for i in ids if i not in pos or fs.train.fold[pos[i]] < 0]
    if missing:
        raise WorkspaceError(f"source {name} does not cover every training row: {len(missing)} missing or skipped, "
                             f"e.g. ids {missing[:5]}; rerun `extract` for it")
    return fs.train.features[[pos[i] for i in ids]].astype(np.float32), name


def training_duplicates(ws: Workspace, data: CompetitionData, descriptor: str | None = None,
                        threshold: float | None = None, skip_bad: bool = False) -> tuple[Duplicates, str, list[int]]:
    """Duplicate groups among the training rows (train.csv order), the descriptor used, and the rows left out of
    the pixel hashing as corrupt."""
    ids = list(data.train.ids)
    X, descriptor = descriptor_features(ws, ids, descriptor)
    digests, bad = cached_pixel_hashes(ws, data, "train", skip_bad=skip_bad)
    valid = np.ones(len(ids), bool)
    valid[bad] = False
    return find_duplicates(digests, X, valid, threshold), descriptor, bad


def suspicion(y: np.ndarray, p_female: np.ndarray, dups: Duplicates, confidence: float
              ) -> tuple[np.ndarray, list[list[str]]]:
    """Score and reasons per row: 1 - P(given label), plus WEIGHTS for a duplicate carrying the other label."""
    p_label = np.where(y == 1, p_female, 1 - p_female)
    exact_group = dups.exact_group
    reasons: list[list[str]] = [[] for _ in y]
    for n in np.flatnonzero(p_label <= 1 - confidence):
        reasons[n].append("confident out-of-fold disagreement")
    for group in dups.groups():
        for n in group:
            other = group[y[group] != y[n]]
            if len(other) == 0:
                continue
            if (exact_group[other] == exact_group[n]).any():
                reasons[n].append("exact duplicate with another label")
            if (exact_group[other] != exact_group[n]).any():
                reasons[n].append("near duplicate with another label")
    score = (1 - p_label) + np.array([sum(WEIGHTS.get(r, 0.0) for r in rs) for rs in reasons])
    return score, reasons


def duplicate_rows(ids: list[str], y: np.ndarray, dups: Duplicates) -> list[list]:
    """One row per duplicate group: first id, kind (exact, near, exact+near), size, ids, labels, conflicting."""
    near_rows = set(dups.near.ravel().tolist())
    rows = []
    for g in dups.groups():
        kinds = [k for k, has in (("exact", len(set(dups.exact_group[g].tolist())) < len(g)),
                                  ("near", bool(near_rows & set(g.tolist())))) if has]
        rows.append([ids[g[0]], "+".join(kinds), len(g), " ".join(ids[m] for m in g),
                     " ".join(str(int(y[m])) for m in g), int(len(set(y[g].tolist())) > 1)])
    return rows


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def audit_labels(workdir: str | Path = "data", data_dir: str | Path | None = None, model: str = "fusion",
                 descriptor: str | None = None, confidence: float = 0.9, threshold: float | None = None,
                 top: int = 48, skip_bad: bool = False, log: Callable[[str], None] = LOG) -> dict:
    """Write <workdir>/audit/: suspects.csv, duplicates.csv, suspects.png (top suspects) and audit.md; return the
    counts."""
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence {confidence}: expected a value in (0.5, 1)")
    t0 = time.time()
    ws = Workspace(workdir)
    bound = ws.bound_data() if data_dir is None else None
    if data_dir is None and bound is None:
        raise option_error(WorkspaceError, "data", f"none given, and the workspace {ws.root} is not bound to a "
                           "readable data folder; name the competition folder", "data folder")
    data = CompetitionData.load(data_dir if data_dir is not None else bound.root)
    theirs = ws.dataset_fingerprint()
    if data_dir is not None and theirs is not None and data.fingerprint(("train",)) != theirs:
        raise option_error(WorkspaceError, "data", f"{data_dir}: its training ids, labels or image sizes are not the "
                           f"ones workspace {ws.root} was made for ({theirs}, {ws.bound_data_path()}); the audit "
                           "compares a folder's labels with this workspace's out-of-fold probabilities: use the "
                           "workspace made for that folder, or rerun `extract` there first", "data folder")
    ids, y = list(data.train.ids), data.train.labels
    p, method = oof_probabilities(ws, model, ids)
    t_hash = time.time()
    dups, descriptor, bad = training_duplicates(ws, data, descriptor, threshold, skip_bad)
    t_hash = time.time() - t_hash
    score, reasons = suspicion(y, p, dups, confidence)
    out = ws.root / "audit"
    suspects = [n for n in np.argsort(-score, kind="stable") if reasons[n]]
    group_of = {int(n): g for g in dups.groups() for n in g}
    p_label = np.where(y == 1, p, 1 - p)

    def twins(n: int) -> str:
        return " ".join(ids[m] for m in group_of.get(int(n), []) if m != n)

    write_text(out / "suspects.csv", _csv(
        ["id", "label", "p_label", "reasons", "duplicates", "score"],
        [[ids[n], int(y[n]), f"{p_label[n]:.4f}", "; ".join(reasons[n]), twins(n), f"{score[n]:.4f}"]
         for n in suspects]))
    dup_rows = duplicate_rows(ids, y, dups)
    write_text(out / "duplicates.csv", _csv(["group", "kind", "size", "ids", "labels", "conflicting"], dup_rows))
    exact_sets = members(dups.exact_group)
    shown = suspects[:top]
    contact_sheet([data.train.folder / f"{ids[n]}.jpg" for n in shown],
                  [[f"{ids[n]} label {int(y[n])}", f"P(label) {p_label[n]:.2f} s {score[n]:.2f}"] for n in shown],
                  out / "suspects.png")
    counts = {
        "rows": len(ids), "model": model, "method": method, "descriptor": descriptor,
        "near_threshold": round(dups.threshold, 4), "exact_pairs": int(len(dups.exact)),
        "near_pairs": int(len(dups.near)),
        "exact_groups": len(exact_sets), "rows_in_groups": int(sum(r[2] for r in dup_rows)),
        "groups_with_near": sum("near" in r[1] for r in dup_rows),
        "conflicting_exact_groups": sum(len(set(y[m].tolist())) > 1 for m in exact_sets),
        "conflicting_exact_pairs": int(sum(y[i] != y[j] for i, j in dups.exact)),
        "conflicting_groups_with_near": sum("near" in r[1] and r[5] for r in dup_rows),
        "confident_disagreements": int(sum("confident out-of-fold disagreement" in r for r in reasons)),
        "suspects": len(suspects), "confidence": confidence, "corrupt_images_skipped": len(bad),
        "duplicates_seconds": round(t_hash, 1), "seconds": round(time.time() - t0, 1),
    }
    write_json(out / "audit.json", counts)
    write_text(out / "audit.md", _markdown(counts, [(ids[n], int(y[n]), p_label[n], reasons[n]) for n in shown[:10]]))
    log(f"audit: {counts['suspects']} suspects; {counts['exact_groups']} exact duplicate groups "
        f"({counts['conflicting_exact_groups']} with conflicting labels), {counts['groups_with_near']} groups with "
        f"near duplicates ({counts['conflicting_groups_with_near']} conflicting; threshold {counts['near_threshold']}); "
        f"{out}")
    return counts


def _markdown(c: dict, top: list[tuple[str, int, float, list[str]]]) -> str:
    lines = [
        "# Label audit", "",
        f"{c['rows']} training rows. Out-of-fold P(label) from model `{c['model']}` ({c['method']}: every row's "
        "probability comes from heads and backbones that never trained on it). Near duplicates: "
        f"`{c['descriptor']}` descriptors closer than **{c['near_threshold']}** (the valley of the nearest-neighbour "
        "distance histogram), searched with faiss.", "",
        "| what | count |", "|---|---|",
        f"| exact duplicate groups (equal decoded pixels) | {c['exact_groups']} ({c['exact_pairs']} links) |",
        f"| exact groups with conflicting labels | {c['conflicting_exact_groups']} "
        f"({c['conflicting_exact_pairs']} links) |",
        f"| near duplicate links (beyond the exact ones) | {c['near_pairs']} |",
        f"| duplicate groups with a near link | {c['groups_with_near']} |",
        f"| of which with conflicting labels | {c['conflicting_groups_with_near']} |",
        f"| rows in a duplicate group (exact or near) | {c['rows_in_groups']} |",
        f"| confident out-of-fold disagreements (P(label) <= {1 - c['confidence']:.2f}) | "
        f"{c['confident_disagreements']} |",
        f"| suspects (any reason) | {c['suspects']} |", "",
        "Top suspects (all in suspects.csv, images in suspects.png):", "",
        "| id | label | P(label) | reasons |", "|---|---|---|---|",
    ]
    lines += [f"| {i} | {lab} | {pl:.3f} | {'; '.join(rs)} |" for i, lab, pl, rs in top]
    lines += ["", f"{c['seconds']} s in all, of which {c['duplicates_seconds']} s finding duplicates (pixel hashing "
                  "included on a first run; cached afterwards)."]
    return "\n".join(lines) + "\n"
