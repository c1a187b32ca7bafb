"""The second stage measured on out-of-fold rows: for each fold, a second stage fitted on the other folds' rows
re-examines the fold's doubtful rows; and accuracy against coverage when the band is abstained on."""
from __future__ import annotations

import numpy as np

from genderfusion.heads.second_stage import KnnSecondStage, in_band


def second_stage_cv(X: np.ndarray, blocks: list[int], y: np.ndarray, fold: np.ndarray, p_first: np.ndarray,
                    band: tuple[float, float], trainable: np.ndarray | None = None) -> np.ndarray:
    """Held-out final P(female) of every row: the first stage's, re-examined inside the band by a second stage
    that never saw the row (nor any row outside `trainable`)."""
    p = np.asarray(p_first, np.float64).copy()
    trainable = np.ones(len(y), bool) if trainable is None else trainable
    for f in np.unique(fold):
        tr, va = (fold != f) & trainable, np.flatnonzero(fold == f)
        stage = KnnSecondStage(band, blocks=blocks).fit(X[tr], y[tr], p_first[tr], fold[tr])
        p[va] = stage.predict_proba(X[va], p_first[va])
    return p


def band_report(y: np.ndarray, p_first: np.ndarray, p_final: np.ndarray, band: tuple[float, float]) -> dict:
    """Accuracy inside the band and overall, before and after the second stage."""
    doubtful = in_band(p_first, band)

    def acc(p, m):
        return float(((p[m] >= 0.5) == y[m]).mean()) if m.any() else float("nan")

    every = np.ones(len(y), bool)
    return {"band": list(band), "rows_in_band": int(doubtful.sum()),
            "band_accuracy_first": acc(p_first, doubtful), "band_accuracy_second": acc(p_final, doubtful),
            "accuracy_first": acc(p_first, every), "accuracy_second": acc(p_final, every)}


def coverage_curve(y: np.ndarray, p: np.ndarray, widths=np.linspace(0, 0.5, 51)) -> list[dict]:
    """Accuracy on the rows kept when those with |P - 0.5| < width are abstained on."""
    out = []
    for w in widths:
        keep = np.abs(p - 0.5) >= w
        if keep.any():
            out.append({"width": round(float(w), 3), "coverage": float(keep.mean()),
                        "accuracy": float(((p[keep] >= 0.5) == y[keep]).mean())})
    return out
