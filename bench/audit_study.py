"""Issue 14 measured on a workspace: the label audit (counts, time, an independent check of the exact duplicates),
whether cleaning the training labels helps (nested CV and `train-head --exclude`), duplicate-aware folds, and the
second stage inside the doubtful band.

    python bench/audit_study.py --workdir W --data ../shared/data/faces --model faces4 --json bench/results/audit.json
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `bench`; genderfusion comes from the install

from bench._report import emit  # noqa: E402


def exact_pairs_by_pixels(paths: list[Path]) -> set[tuple[int, int]]:
    """Reference for the audit's exact duplicates: rows whose decoded pixels are byte-for-byte equal (a dict keyed
    by the pixel bytes themselves; no digest)."""
    from genderfusion.extract.data.images import load_rgb

    first: dict[bytes, int] = {}
    pairs = set()
    for n, p in enumerate(paths):
        a = load_rgb(p)
        key = repr(a.shape).encode() + a.tobytes()
        if key in first:
            pairs.add((first[key], n))
        else:
            first[key] = n
    return pairs


def accuracy(p: np.ndarray, y: np.ndarray, m: np.ndarray | None = None) -> float:
    m = np.ones(len(y), bool) if m is None else m
    return round(float(((p[m] >= 0.5) == y[m]).mean()), 5)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--model", default="fusion", help="trained model whose sources and head are studied")
    p.add_argument("--cutoffs", default="0,0.005,0.01,0.02,0.04", help="fractions of training rows left out")
    p.add_argument("--exclude-top", default="100,200", help="train-head --exclude runs: top-N suspects")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from genderfusion.files.json_files import read_json
    from genderfusion.extract.data.dataset import CompetitionData
    from genderfusion.extract.data.folds import make_folds
    from genderfusion.extract.data.workspace import Workspace
    from genderfusion.extract.sources.base import FROZEN
    from genderfusion.fusion.audit.labels import audit_labels, training_duplicates
    from genderfusion.fusion.model.classifier import head_factory
    from genderfusion.fusion.audit.cleaning import cleaning_cv
    from genderfusion.fusion.model.features import FusionData, load_sources
    from genderfusion.fusion.model.protocol import cv_global
    from genderfusion.fusion.model.features import descriptors
    from genderfusion.fusion.training.second_stage_cv import band_report, second_stage_cv
    from genderfusion.fusion.training.train_head import HeadTraining, train_head

    ws, data = Workspace(args.workdir), CompetitionData.load(args.data)
    out: dict = {"workdir": args.workdir, "model": args.model}
    t = time.time()
    out["audit"] = audit_labels(args.workdir, args.data, args.model)
    out["audit_wall_s"] = round(time.time() - t, 1)

    y_all = data.train.labels
    t = time.time()
    ref = exact_pairs_by_pixels(data.train.paths)
    dups, _, _ = training_duplicates(ws, data)
    found = {tuple(sorted(map(int, pr))) for pr in dups.exact}
    same_group = {(i, j) for g in dups.groups() for i in g for j in g if i < j}
    ref_conflicts = {pr for pr in ref if y_all[pr[0]] != y_all[pr[1]]}
    out["exact_check"] = {
        "reference_pairs": len(ref), "reference_conflicting_pairs": len(ref_conflicts),
        "audit_links": len(found), "reference_pairs_missed": len({pr for pr in ref if pr not in same_group}),
        "false_links": len({pr for pr in found if pr not in ref}), "seconds": round(time.time() - t, 1)}

    report = read_json(ws.head_dir(args.model) / "report.json")
    features = report["features"]
    method = report["best_method"].split(" [")[0]
    fusion = load_sources(args.workdir, features)
    y = fusion.y
    suspects = {r["id"] for r in csv.DictReader(open(ws.root / "audit" / "suspects.csv"))}
    clean = ~np.isin(fusion.ids.astype(str), list(suspects))
    ages = np.array([int(data.meta.get(i, {}).get("age", -1)) for i in fusion.ids], dtype=int)
    young = (ages >= 0) & (ages <= 9)

    cutoffs = [float(c) for c in args.cutoffs.split(",")]
    t = time.time()
    nested = cleaning_cv(fusion, head_factory(method), cutoffs, dups)
    out["cleaning_nested"] = {
        "head": f"{method} [global]", "seconds": round(time.time() - t, 1),
        "rows": [{"cutoff": c, "left_out_per_fold": int(round(c * len(y) * (fusion.k - 1) / fusion.k)),
                  "cv_all_rows": accuracy(nested[c], y), "cv_non_suspects": accuracy(nested[c], y, clean),
                  "cv_suspects": accuracy(nested[c], y, ~clean), "cv_ages_0_9": accuracy(nested[c], y, young)}
                 for c in cutoffs]}

    direct = []
    for top in [0] + [int(n) for n in args.exclude_top.split(",")]:
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as fh:
            ranked = [r["id"] for r in csv.DictReader(open(ws.root / "audit" / "suspects.csv"))][:top]
            fh.write("id\n" + "".join(f"{i}\n" for i in ranked))
        r = train_head(args.workdir, HeadTraining(features, [method], ("global",), f"study-exclude-{top}",
                                                  exclude=fh.name if top else None),
                       log=lambda s: None)
        probs = np.load(ws.head_dir(f"study-exclude-{top}") / "cv_probs.npz")[f"{method} [global]"]
        direct.append({"top_suspects_excluded": top, "cv_all_rows": accuracy(probs, y),
                       "cv_non_suspects": accuracy(probs, y, clean), "cv_ages_0_9": accuracy(probs, y, young),
                       "seconds": r["seconds_total"]})
    out["cleaning_train_head_exclude"] = direct

    frozen = [s for s in fusion.sources if s.kind == FROZEN]
    grouped = make_folds(y, fusion.k, 0, ages, dups.group)
    rows = []
    for name, fold in (("workspace folds", fusion.fold), ("duplicate-aware folds", grouped)):
        fd = FusionData(fusion.ids, y, fold, fusion.test_ids, frozen)
        first = cv_global(fd, head_factory(method))
        X, blocks = descriptors(fd)
        final = second_stage_cv(X, blocks, y, fold, first, (0.45, 0.55))
        split_groups = sum(len(set(fold[g].tolist())) > 1 for g in dups.groups())
        rows.append({"folds": name, "groups_split_across_folds": int(split_groups), "cv": accuracy(first, y),
                     "cv_ages_0_9": accuracy(first, y, young), "second_stage": band_report(y, first, final,
                                                                                          (0.45, 0.55))})
    out["duplicate_aware_folds"] = {"sources": [s.name for s in frozen], "head": f"{method} [global]", "rows": rows}

    oof = np.load(ws.head_dir(args.model) / "cv_probs.npz")[report["best_method"]]
    X, blocks = descriptors(fusion)
    final = second_stage_cv(X, blocks, y, fusion.fold, oof, (0.45, 0.55))
    out["second_stage"] = {"first_stage": report["best_method"], **band_report(y, oof, final, (0.45, 0.55))}
    for band in ((0.4, 0.6), (0.3, 0.7)):
        out["second_stage"][f"band {band[0]}-{band[1]}"] = band_report(
            y, oof, second_stage_cv(X, blocks, y, fusion.fold, oof, band), band)
    return emit(out, args.json)


if __name__ == "__main__":
    main()
