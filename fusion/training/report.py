"""Reports of CV results: Markdown, JSON and PNG plots (accuracy table, confusion matrix, histogram, groups)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from genderfusion.files.atomic import atomic_path, write_json, write_text
from genderfusion.extract.data.groups import group_masks, ordered_groups

from genderfusion.fusion.model.protocol import Result
from genderfusion.fusion.training.second_stage_cv import coverage_curve


def result_rows(results: list[Result], y: np.ndarray, masks: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for r in results:
        row = {"method": r.method, "protocol": r.protocol, "accuracy": round(r.accuracy(y), 5),
               "seconds": round(r.seconds, 2), "n": int(len(y))}
        row["groups"] = {g: round(r.accuracy(y, m), 5) for g, m in masks.items()}
        rows.append(row)
    return rows


def confusion(y: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> list[list[int]]:
    pred = (probs >= threshold).astype(int)
    return [[int(((y == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]


def markdown(rows: list[dict], chosen: dict, cm: list[list[int]], band: tuple[float, float], doubtful: float,
             group_sizes: dict[str, int], title: str) -> str:
    groups = ordered_groups(rows[0]["groups"]) if rows else []
    lines = [f"# {title}", "", "Every accuracy is on training rows that neither the backbone nor the head trained on "
             "(out-of-fold backbones; heads by inner or outer CV on the shared folds).", "",
             "| method | protocol | CV accuracy | " + " | ".join(groups) + " | seconds |",
             "|---|---|---|" + "---|" * len(groups) + "---|"]
    for r in rows:
        g = " | ".join(f"{r['groups'][k]:.4f}" for k in groups)
        lines.append(f"| {r['method']} | {r['protocol']} | **{r['accuracy']:.4f}** | {g} | {r['seconds']:.1f} |")
    if groups:
        lines.append("| rows | | " + str(rows[0]["n"]) + " | " + " | ".join(str(group_sizes[k]) for k in groups)
                     + " | |")
    lines += ["", f"Saved model: **{chosen['method']}** ({chosen['protocol']}), CV accuracy {chosen['accuracy']:.4f}.",
              "", "Confusion matrix of its CV predictions (rows: true, columns: predicted; 0 = male, 1 = female):", "",
              "| | pred 0 | pred 1 |", "|---|---|---|", f"| true 0 | {cm[0][0]} | {cm[0][1]} |",
              f"| true 1 | {cm[1][0]} | {cm[1][1]} |", "",
              f"Doubtful (P(female) in [{band[0]}, {band[1]}]): {doubtful:.2%} of rows."]
    return "\n".join(lines) + "\n"


def plots(out_dir: Path, rows: list[dict], y: np.ndarray, probs: np.ndarray, band: tuple[float, float],
          cm: list[list[int]], coverage: dict[str, np.ndarray] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def save(fig, name):
        p = out_dir / name
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1))
    labels = [f"{r['method']} [{r['protocol']}]" for r in rows]
    ax.barh(labels, [r["accuracy"] for r in rows], color="tab:blue")
    lo = min(r["accuracy"] for r in rows)
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax.invert_yaxis()
    ax.set_xlabel("CV accuracy")
    save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(3.5, 3))
    ax.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, cm[i][j], ha="center", va="center")
    ax.set_xticks([0, 1], ["male", "female"])
    ax.set_yticks([0, 1], ["male", "female"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    save(fig, "confusion.png")

    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(0, 1, 41)
    ax.hist(probs[y == 0], bins, alpha=0.6, label="male")
    ax.hist(probs[y == 1], bins, alpha=0.6, label="female")
    ax.axvspan(*band, color="grey", alpha=0.3, label="doubtful")
    ax.set_xlabel("P(female)")
    ax.legend()
    save(fig, "histogram.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, p in (coverage or {"chosen head": probs}).items():
        curve = coverage_curve(y, p)
        ax.plot([c["coverage"] for c in curve], [c["accuracy"] for c in curve], marker=".", label=label)
    ax.set_xlabel("coverage (rows not abstained on)")
    ax.set_ylabel("accuracy on the rows kept")
    ax.set_title("abstaining on |P(female) - 0.5| < w, w = 0 ... 0.5", fontsize=8)
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    save(fig, "coverage.png")

    groups = ordered_groups(rows[0]["groups"])
    if groups:
        fig, ax = plt.subplots(figsize=(max(6, len(groups) * 0.9), 3.5))
        show = [r for r in rows if r["protocol"] != "out-of-fold logit" or r is rows[0]]
        width = 0.8 / max(1, len(show))
        for i, r in enumerate(show):
            ax.bar(np.arange(len(groups)) + i * width, [r["groups"][g] for g in groups], width,
                   label=f"{r['method']} [{r['protocol']}]")
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=30)
        ax.set_ylabel("CV accuracy")
        ax.set_ylim(0.4, 1.0)
        ax.legend(fontsize=6, ncol=2)
        save(fig, "groups.png")
    return paths


def write_report(out_dir: Path, results: list[Result], chosen: Result, y: np.ndarray,
                 ages: np.ndarray | None, races: np.ndarray | None, band: tuple[float, float] = (0.45, 0.55),
                 title: str = "Fusion CV report", extra: dict | None = None,
                 coverage: dict[str, np.ndarray] | None = None) -> dict:
    """Write report.md, report.json and the PNG plots; returns the JSON object."""
    out_dir.mkdir(parents=True, exist_ok=True)
    masks = group_masks(ages, races)
    rows = result_rows(results, y, masks)
    chosen_row = next(r for r, res in zip(rows, results) if res is chosen)
    cm = confusion(y, chosen.probs)
    doubtful = float(((chosen.probs >= band[0]) & (chosen.probs <= band[1])).mean())
    sizes = {g: int(m.sum()) for g, m in masks.items()}
    write_text(out_dir / "report.md", markdown(rows, chosen_row, cm, band, doubtful, sizes, title))
    obj = {"rows": rows, "chosen": chosen_row, "confusion": cm, "doubtful_band": list(band),
           "doubtful_fraction": doubtful, "group_sizes": sizes, **(extra or {})}
    write_json(out_dir / "report.json", obj)
    plots(out_dir, rows, y, chosen.probs, band, cm, coverage)
    return json.loads(json.dumps(obj))
