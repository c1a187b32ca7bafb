"""`train-head` as a library call: evaluate sources, votes and heads on the shared folds, save the best head."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from genderfusion.files.atomic import atomic_dir, write_json
from genderfusion.files.json_files import read_json
from genderfusion.option_errors import option_error
from genderfusion.extract.cache import format as fc
from genderfusion.extract.data.exclusion import exclusion_mask, read_ids
from genderfusion.extract.data.workspace import Workspace
from genderfusion.extract.errors import DataError, WorkspaceError
from genderfusion.heads.second_stage import DEFAULT_BAND

from genderfusion.fusion.model.cascade import DEFAULT_TOLERANCE
from genderfusion.fusion.model.classifier import FusionClassifier, head_factory
from genderfusion.fusion.model.features import FusionData, descriptors, load_sources
from genderfusion.fusion.model.model_file import FILE_NAME as MODEL_FILE
from genderfusion.fusion.model.protocol import DEFAULT_PROTOCOLS, PROTOCOLS, Result, evaluate
from genderfusion.fusion.training.card import write_card
from genderfusion.fusion.training.report import write_report
from genderfusion.fusion.training.second_stage_cv import band_report, second_stage_cv

LOG = logging.getLogger("genderfusion").info  # progress lines, unless the caller passes its own `log`


def _fingerprint(workdir: Path, training: "HeadTraining", excluded: list[str]) -> str:
    """Identifies the inputs of a train-head run from the caches' attributes alone (no features read)."""
    h = hashlib.sha256()
    ws = Workspace(workdir)
    for name in training.features:
        a = fc.read_attrs(ws.features_path(name))
        h.update(json.dumps([name, a.get("recipe"), a.get("plan"), a.get("complete")], sort_keys=True).encode())
    cascade = {"sources": list(training.cascade), "tolerance": training.cascade_tolerance,
               "speed_n": training.cascade_speed_n} if training.cascade else None
    h.update(json.dumps([list(training.heads), list(training.protocols), list(training.band), 1]
                        + ([sorted(set(excluded))] if excluded else [])
                        + (["second stage"] if training.second_stage else [])
                        + ([cascade] if cascade else [])).encode())  # unchanged without these
    return h.hexdigest()[:16]


def train_meta(workdir: Path, ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Ages and races of the given training ids from the workspace's data folder (None without train_meta.csv)."""
    data = Workspace(workdir).bound_data()
    return (None, None) if data is None else data.meta_of(ids)


def refuse_stale_caches(workdir: Path, features: list[str]) -> None:
    """Each cache must hold the workspace's training rows with train.csv's labels now: a cache of another dataset
    or a corrected label is never trained on silently. Without the data folder (moved or deleted), the caches'
    training ids must be the ones the workspace was made for."""
    ws = Workspace(workdir)
    data = ws.bound_data()
    if data is None:
        for name in features:
            with fc.opened(ws.features_path(name)) as f:
                sizes = f["train/filesize"][()].tolist()
            cached = fc.load(ws.features_path(name), with_features=False).train
            ws.check_training_rows(list(cached.ids), cached.labels.tolist(), sizes, f"{name}'s cache")
        return
    now = dict(zip(data.train.ids, data.train.labels.tolist()))
    for name in features:
        cached = fc.load(Workspace(workdir).features_path(name), with_features=False).train
        foreign = [i for i in cached.ids if i not in now]
        if foreign or len(cached.ids) != len(now):
            raise DataError(f"{name}: its cache holds {len(cached.ids)} training rows, {data.root / 'train.csv'} "
                            f"{len(now)}" + (f"; ids such as {foreign[:3]} are not in it" if foreign else "")
                            + f"; rerun `extract` for {name} in this workspace")
        changed = [n for n, (i, label) in enumerate(zip(cached.ids, cached.labels.tolist())) if now[i] != label]
        if changed:
            i = cached.ids[changed[0]]
            raise DataError(f"{len(changed)} label(s) in {data.root / 'train.csv'} differ from {name}'s cached ones "
                            f"(e.g. id {i}: cached {cached.labels[changed[0]]}, now {now[i]}); rerun `extract` for "
                            "each source (frozen sources recompute only those rows; fine-tuned ones name the folds "
                            "to retrain)")


@dataclass(frozen=True)
class HeadTraining:
    """What one train-head run fits, and how. features: the sources to fuse; heads: the heads to compare;
    protocols: the stacking protocols; name: the saved model's name under <workdir>/heads/; band: the doubtful band;
    refit: recompute even when cached results match; exclude: a file of training ids no head trains on (every row
    is still evaluated, on its given label); second_stage: re-examine the best head's predictions inside `band` by a
    kNN vote of the nearest training faces (measured on out-of-fold rows; kept when it raises the out-of-fold
    accuracy); cascade: sources of a cheap first stage (fit_cascade), losing at most cascade_tolerance accuracy out of
    fold, its speed measured on cascade_speed_n test images of the workspace's data folder."""
    features: Sequence[str]
    heads: Sequence[str]
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    name: str = "fusion"
    band: tuple[float, float] = DEFAULT_BAND
    refit: bool = False
    exclude: str | Path | None = None
    second_stage: bool = False
    cascade: Sequence[str] | None = None
    cascade_tolerance: float = DEFAULT_TOLERANCE
    cascade_speed_n: int = 256

    def check(self) -> None:
        """Refuse, before any work, what cannot be trained."""
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise ValueError(f"unknown protocol {p!r}; choose from {PROTOCOLS}")
        for h in self.heads:
            head_factory(h)  # unknown heads fail before any work
        if not self.band[0] <= self.band[1]:
            raise ValueError(f"band {self.band}: expected LO <= HI")
        cascade, features = list(self.cascade or []), list(self.features)
        unknown = [c for c in cascade if c not in features]
        if unknown:
            raise option_error(ValueError, "cascade", f"{','.join(cascade)}: {unknown[0]} is not one of the features "
                                                      f"{','.join(features)}")
        if cascade and set(cascade) >= set(features):
            raise option_error(ValueError, "cascade", f"{','.join(cascade)}: a cheap first stage leaves out some of the "
                                                      f"features {','.join(features)} (the ones it saves running)")
        if cascade and not 0 <= self.cascade_tolerance < 1:
            raise ValueError(f"cascade tolerance {self.cascade_tolerance}: a number in [0, 1)")


def train_head(workdir: str | Path, training: HeadTraining, log: Callable[[str], None] = LOG) -> dict:
    """Evaluate every source alone, both votes and each head, then fit and save the best head by CV (and what
    `training` adds: the second stage, the cascade); return the report."""
    t0 = time.time()
    training.check()
    workdir = Path(workdir)
    features = list(training.features)
    out_dir = Workspace(workdir).head_dir(training.name)
    refuse_stale_caches(workdir, features)
    excluded = read_ids(training.exclude) if training.exclude is not None else []
    fp = _fingerprint(workdir, training, excluded)
    report = None if training.refit else _cached_report(out_dir, fp)
    if report is not None:
        log(f"cached results for these caches and heads ({out_dir}); refitting recomputes them")
        return {**report, "seconds_total": round(time.time() - t0, 2), "cached": True}
    data = _training_rows(workdir, training, excluded, log)
    heads = list(training.heads)
    results = evaluate(data, {h: head_factory(h) for h in heads}, training.protocols, probe=head_factory("logistic"),
                       log=log)
    best = max((r for r in results if r.method in heads), key=lambda r: r.accuracy(data.y))
    clf = FusionClassifier(features, best.method, best.protocol, workdir=workdir, band=training.band).fit(data)
    coverage = {f"{best.method} [{best.protocol}]": best.probs}
    chosen, stage2 = best, {}
    if training.second_stage:
        chosen, stage2 = _second_stage(clf, data, best, results, coverage, training.band, log)
    casc = None
    if training.cascade:
        casc = fit_cascade(clf, data, chosen.probs, list(training.cascade), heads, training.cascade_tolerance,
                           training.cascade_speed_n, workdir, log)
        results.append(Result(f"cascade: {' + '.join(training.cascade)} ({casc['head']})", "global",
                              casc.pop("probs"), 0.0))
        coverage[results[-1].method] = results[-1].probs
    try:  # the sources' features of the probe image, checked wherever the model is loaded (fusion.model.probe)
        clf.fit_probe()
    except (WorkspaceError, OSError, ValueError) as exc:  # caches without the networks that made them
        log(f"no probe features stored: the sources cannot be built here ({exc})")
    extra = {"features": features, "heads": heads, "second_stage": stage2 or None, "cascade": casc,
             "fingerprint": fp}
    return _save(out_dir, workdir, clf, data, results, chosen, extra, coverage, t0)


def _cached_report(out_dir: Path, fp: str) -> dict | None:
    """The saved report of an earlier run with the same inputs, if there is one."""
    if not ((out_dir / "results.json").exists() and (out_dir / MODEL_FILE).exists()):
        return None
    return read_json(out_dir / "report.json") if read_json(out_dir / "results.json").get("fingerprint") == fp \
        else None


def _training_rows(workdir: Path, training: HeadTraining, excluded: list[str], log: Callable[[str], None]
                   ) -> FusionData:
    """The sources' cached features, with the excluded rows marked."""
    data = load_sources(workdir, list(training.features))
    if training.exclude is not None:
        data.excluded = exclusion_mask(data.ids, data.y, excluded, f"the exclude file {training.exclude}")
        log(f"{int(data.excluded.sum())} row(s) of {training.exclude} left out of head training (still evaluated)")
    log(f"{len(data.y)} training rows, {data.k} folds, sources: "
        + ", ".join(f"{s.name} ({s.kind}, {s.width}-d)" for s in data.sources)
        + (f"; {len(data.skipped_ids)} row(s) skipped at extraction left out (ids {list(data.skipped_ids[:5])})"
           if len(data.skipped_ids) else ""))
    return data


def _second_stage(clf: FusionClassifier, data: FusionData, best: Result, results: list[Result], coverage: dict,
                  band: tuple[float, float], log: Callable[[str], None]) -> tuple[Result, dict]:
    """Measure the second stage out of fold after the best head; fit it into the model when it raises the
    out-of-fold accuracy. Returns the result the model now stands for, and the second stage's report."""
    X, blocks = descriptors(data)
    final = second_stage_cv(X, blocks, data.y, data.fold, best.probs, band, data.trainable)
    stage2 = band_report(data.y, best.probs, final, band)
    stage2["kept"] = stage2["accuracy_second"] > stage2["accuracy_first"]
    log(f"  second stage in the band {band}: {stage2['rows_in_band']} rows, accuracy "
        f"{stage2['band_accuracy_first']:.4f} -> {stage2['band_accuracy_second']:.4f}; overall "
        f"{stage2['accuracy_first']:.4f} -> {stage2['accuracy_second']:.4f}"
        + ("" if stage2["kept"] else "; not kept in the model (it does not raise the out-of-fold accuracy)"))
    results.append(Result(f"{best.method} + second stage", best.protocol, final, 0.0))
    coverage[f"{best.method} [{best.protocol}] + second stage"] = final
    if not stage2["kept"]:
        return best, stage2
    clf.fit_second_stage(data, best.probs)  # like the head itself, chosen by out-of-fold accuracy
    return results[-1], stage2


def _save(out_dir: Path, workdir: Path, clf: FusionClassifier, data: FusionData, results: list[Result],
          chosen: Result, extra: dict, coverage: dict, t0: float) -> dict:
    """The model, its report, CV probabilities and card, replacing the old ones as a whole; returns the report."""
    with atomic_dir(out_dir) as tmp_dir:
        clf.save(tmp_dir / MODEL_FILE)
        ages, races = train_meta(workdir, data.ids)
        wv = next((r for r in results if r.method == "weighted-vote"), None)
        extra = {**extra, "best_method": f"{chosen.method} [{chosen.protocol}]",
                 "best_cv_accuracy": chosen.accuracy(data.y),
                 "weighted_vote_cv_accuracy": wv.accuracy(data.y) if wv else None,
                 "gain_over_weighted_vote": chosen.accuracy(data.y) - wv.accuracy(data.y) if wv else None,
                 "excluded_from_training": int(data.excluded.sum()) if data.excluded is not None else 0}
        report = write_report(tmp_dir, results, chosen, data.y, ages, races, clf.band,
                              title=f"Fusion of {', '.join(extra['features'])}", extra=extra, coverage=coverage)
        np.savez_compressed(tmp_dir / "cv_probs.npz", ids=data.ids.astype(str), y=data.y,
                            **{f"{r.method} [{r.protocol}]": r.probs for r in results})
        write_card(tmp_dir, workdir, name=out_dir.name)
        report["seconds_total"] = round(time.time() - t0, 2)
        report["cached"] = False
        write_json(tmp_dir / "results.json", {"fingerprint": extra["fingerprint"],
                                              "seconds_total": report["seconds_total"]})
    return report


def fit_cascade(clf: FusionClassifier, data, p_full: np.ndarray, sources: list[str], heads: list[str],
                tolerance: float, speed_n: int, workdir: Path, log: Callable[[str], None]) -> dict:
    """Fit the cascade whose cheap head (one of `heads`) lets the most rows exit out of fold, and report it: nested
    CV accuracy against the full model's, exit share, and warm img/s with and without it on test images."""
    y = data.y
    full_acc = float(((p_full >= 0.5) == y).mean())
    best, best_key = None, None
    for head in heads:
        c = clf.fit_cascade(data, p_full, sources, head, tolerance).cascade_
        acc = float(((c.cv_ >= 0.5) == y).mean())
        log(f"  cascade {' + '.join(sources)} ({head}): exit share {c.cv_exits_.mean():.3f}, CV accuracy {acc:.4f} "
            f"(full {full_acc:.4f}); band {c.band_[0]:.4f}..{c.band_[1]:.4f}")
        within = acc >= full_acc - tolerance - 1e-12
        key = (within, c.cv_exits_.mean() if within else acc, acc)  # the most exits within the tolerance
        if best is None or key > best_key:
            best, best_key, best_acc = c, key, acc
    if not best_key[0]:
        log(f"  warning: out of fold the cascade loses {full_acc - best_acc:.4f} accuracy, more than its "
            f"tolerance {tolerance}; the band chosen on all training rows does not hold on held-out folds")
    clf.cascade_ = best
    cheap_acc = float(((best.oof_ >= 0.5) == y).mean())
    out = {"sources": list(sources), "head": best.head, "tolerance": tolerance, "band": [float(b) for b in best.band_],
           "cv_accuracy": best_acc, "full_cv_accuracy": full_acc, "within_tolerance": bool(best_key[0]),
           "cheap_stage_cv_accuracy": cheap_acc,
           "exit_share": float(best.cv_exits_.mean()),
           "exit_accuracy": float(((best.cv_[best.cv_exits_] >= 0.5) == y[best.cv_exits_]).mean())
           if best.cv_exits_.any() else None, "probs": best.cv_}
    paths = _speed_images(workdir, speed_n)
    if paths:
        from genderfusion.fusion.training.speed import cascade_speed

        out["speed"] = cascade_speed(clf, paths)
        s = out["speed"]
        log(f"  cascade speed on {s['images']} test images: {s['cascade_img_per_s']} img/s against "
            f"{s['full_img_per_s']} with every source (x{s['speedup']}), {s['exit_share']:.3f} decided early")
    return out


def _speed_images(workdir: Path, n: int) -> list[Path]:
    """Up to n test images (else training images) of the workspace's data folder, for the speed measurement."""
    data = Workspace(workdir).bound_data() if n else None
    if data is None:
        return []
    split = data.test if len(data.test.ids) else data.train
    return [p for p, size in zip(split.paths, split.sizes) if size >= 0][:n]
