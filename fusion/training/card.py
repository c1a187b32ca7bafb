"""A model card for a trained fusion model: one self-contained HTML page (images embedded, no network) with what
the model is, its out-of-fold accuracy by group with intervals, calibration, accuracy against coverage, the faces it
gets wrong, its speed when measured, and its limits."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from pathlib import Path

import numpy as np

from genderfusion.files.atomic import write_text

from genderfusion.files.json_files import read_json
from genderfusion.extract.data.groups import age_groups, group_masks, ordered_groups
from genderfusion.extract.data.workspace import Workspace

PALETTE = {"model": "#1f77b4", "vote": "#ff7f0e", "source": "#2ca02c", "male": "#4c72b0", "female": "#dd8452",
           "band": "#999999"}
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .55em;
text-align:left}th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.face{width:96px;font-size:.72em;text-align:center}
.face img{width:96px;height:96px;object-fit:cover;border-radius:4px}.muted{color:#666;font-size:.9em}
.plots img{max-width:49%;vertical-align:top}"""


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))  # rounding must not put p outside


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[list[dict], float]:
    """Reliability bins of P(female) (mean predicted, observed fraction female, count) and the expected calibration
    error (count-weighted mean |observed - predicted|)."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"predicted": float(p[m].mean()), "observed": float(y[m].mean()), "n": int(m.sum())})
            ece += m.sum() / len(p) * abs(y[m].mean() - p[m].mean())
    return out, float(ece)


def coverage_curve(y: np.ndarray, p: np.ndarray) -> list[dict]:
    """Accuracy on the rows kept when the band 0.5 ± w is abstained on, for w from 0 to 0.45."""
    out = []
    for w in np.linspace(0, 0.45, 19):
        keep = np.abs(p - 0.5) > w if w > 0 else np.ones(len(p), bool)
        out.append({"half_width": float(w), "coverage": float(keep.mean()),
                    "accuracy": float(((p[keep] >= 0.5) == y[keep]).mean()) if keep.any() else math.nan})
    return out


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(y, p, band, groups, accs, calib, curve) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(max(6.5, 1.0 * len(groups)), 3.6))
    x = np.arange(len(groups))
    for i, (label, color, key) in enumerate([("this model", PALETTE["model"], "model"),
                                             ("weighted vote", PALETTE["vote"], "vote"),
                                             ("best single source", PALETTE["source"], "source")]):
        vals = [accs[g][key] for g in groups]
        err = None
        if key == "model":
            err = np.array([[accs[g]["model"] - accs[g]["lo"], accs[g]["hi"] - accs[g]["model"]] for g in groups]).T
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, color=color, label=label, yerr=err, capsize=2)
    ax.set_xticks(x, groups, rotation=25, ha="right")
    lo = np.nanmin([[a["lo"], a["vote"], a["source"]] for a in accs.values()])
    ax.set_ylim(max(0.0, float(lo) - 0.05), 1.0)
    ax.set_ylabel("out-of-fold accuracy")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=3, frameon=False)
    out["groups"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="#aaa", lw=1, label="perfect")
    ax.plot([c["predicted"] for c in calib], [c["observed"] for c in calib], "o-", color=PALETTE["model"],
            label="this model")
    ax.set_xlabel("mean predicted P(female)")
    ax.set_ylabel("observed fraction female")
    ax.legend(loc="upper left", frameon=False)
    out["calibration"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bins = np.linspace(0, 1, 41)
    ax.hist(p[y == 0], bins, alpha=0.6, color=PALETTE["male"], label="true male")
    ax.hist(p[y == 1], bins, alpha=0.6, color=PALETTE["female"], label="true female")
    ax.axvspan(*band, color=PALETTE["band"], alpha=0.3, label="doubtful band")
    ax.set_yscale("log")
    ax.set_xlabel("P(female)")
    ax.set_ylabel("rows (log scale)")
    ax.legend(loc="upper center", frameon=False, fontsize=8)
    out["histogram"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.plot([c["coverage"] for c in curve], [c["accuracy"] for c in curve], "o-", color=PALETTE["model"], ms=3)
    ax.set_xlabel("coverage (rows not abstained on)")
    ax.set_ylabel("accuracy on covered rows")
    ax.invert_xaxis()
    out["coverage"] = _png(fig)
    return out


def _thumb(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((96, 96))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode()


def _gallery(title: str, rows: np.ndarray, ids, y, p, ages, folder: Path | None) -> str:
    if folder is None or not len(rows):
        return f"<p class='muted'>{html.escape(title)}: no images available.</p>"
    parts = [f"<h3>{html.escape(title)}</h3>"]
    bands = {"all": (0, 10_000)} if ages is None else age_groups()
    for band_name, (lo, hi) in bands.items():
        members = [i for i in rows if ages is None or lo <= ages[i] <= hi]
        if not members:
            continue
        parts.append(f"<p><b>age {band_name}</b></p><div class='gallery'>")
        for i in members:
            label = "female" if y[i] else "male"
            parts.append(f"<div class='face'><img alt='{ids[i]}' src='data:image/jpeg;base64,"
                         f"{_thumb(folder / f'{ids[i]}.jpg')}'><br>{ids[i]}<br>{label}, P={p[i]:.2f}</div>")
        parts.append("</div>")
    return "".join(parts)


def _f(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.4f}"


def _table(header: list[str], rows: list[list], attrs: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr" + (f" {attrs[i]}" if attrs else "") + ">" + "".join(
        f"<td class='num'>{c}</td>" if isinstance(c, (int, float)) else f"<td>{html.escape(str(c))}</td>"
        for c in r) + "</tr>" for i, r in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _second_stage(clf) -> str:
    """The second stage in words, when the model has one."""
    stage = clf.second_stage_
    if stage is None:
        return ""
    lo, hi = stage.band
    return (f", then a <b>second stage</b> for P(female) in [{lo}, {hi}]: a vote of the {stage.k_} nearest training "
            "faces in the frozen sources' features")


def _cascade(report: dict) -> str:
    """The cascade in words, when the model has one."""
    c = report.get("cascade")
    if not c:
        return ""
    return (f"<p>A <b>cascade</b> goes first: a {html.escape(c['head'])} head on "
            f"{html.escape(' + '.join(c['sources']))} decides the faces whose P(female) lies outside "
            f"[{c['band'][0]:.4f}, {c['band'][1]:.4f}]; only the others run every source. Out of fold it decided "
            f"<span id='cascade-exit'>{c['exit_share']:.1%}</span> of the training faces early, with accuracy "
            f"<span id='cascade-cv'>{c['cv_accuracy']:.4f}</span> against {c['full_cv_accuracy']:.4f} for every "
            "source on every face.</p>")


def _group_accuracies(cv, y: np.ndarray, p: np.ndarray, masks: dict, keys: tuple[str, str | None, str | None]
                      ) -> tuple[list[str], dict]:
    """The groups in order ("all" first), and per group: the model's accuracy with its 95 % interval, the faces, and
    the weighted vote's and the best single source's accuracy (keys: the model's, the vote's and the source's
    columns of cv)."""
    key, vote_key, single_key = keys

    def acc(k, m):
        return float(((cv[k][m] >= 0.5) == y[m]).mean()) if k and m.any() else math.nan

    groups = ["all"] + ordered_groups([g for g in masks if g != "all"])
    accs = {}
    for g in groups:
        m = masks[g]
        lo, hi = wilson(int(((p[m] >= 0.5) == y[m]).sum()), int(m.sum()))
        accs[g] = {"model": acc(key, m), "lo": lo, "hi": hi, "n": int(m.sum()), "vote": acc(vote_key, m),
                   "source": acc(single_key, m)}
    return groups, accs


def _limits(report: dict, n: int, groups: list[str], accs: dict, band: tuple[float, float], ece: float) -> list[str]:
    """What the card says the model cannot do."""
    weakest = min((g for g in groups if g != "all" and accs[g]["n"] >= 30), key=lambda g: accs[g]["model"],
                  default=None)
    limits = [f"Out-of-fold accuracy {accs['all']['model']:.2%} (95 % interval {accs['all']['lo']:.2%}–"
              f"{accs['all']['hi']:.2%}) on {n} training faces; the competition's test faces are unlabelled."]
    if weakest:
        limits.append(f"Weakest group: {weakest}, {accs[weakest]['model']:.2%} on {accs[weakest]['n']} faces "
                      f"({accs['all']['model'] - accs[weakest]['model']:.1%} below the whole set).")
    limits.append(f"{report['doubtful_fraction']:.1%} of the faces fall in the doubtful band {band[0]}–{band[1]}; "
                  f"expected calibration error {ece:.3f}.")
    limits.append("Labels are binary (0 = male, 1 = female) as given by the competition; the model says nothing "
                  "about gender identity.")
    return limits


def _source_rows(clf) -> list[list]:
    """One table row per source: kind, network, layer, pooling, input size, normalisation, weights."""
    rows = []
    for r in clf.recipes_:
        shas = ", ".join(s[:12] for s in r["checkpoint_sha256"])
        rows.append([r["source"], r["kind"], r["backbone"], r["layer"], r["pooling"], r["img_size"],
                     ", ".join(f"{v:.3g}" for v in r["mean"]) + " / " + ", ".join(f"{v:.3g}" for v in r["std"]),
                     shas])
    return rows


def _speed_html(speed: dict | None, speed_chart: str | Path | None) -> str:
    html_ = (_table(["measure", "value"], [[k, v] for k, v in speed.items()]) if speed else
             "<p class='muted'>Not measured for this model (bench/run.py measures its best model).</p>")
    if speed_chart is not None and Path(speed_chart).is_file():
        png = base64.b64encode(Path(speed_chart).read_bytes()).decode()
        html_ += (f"<p>Candidate models, CV accuracy against predict speed:</p><p class='plots'>"
                  f"<img alt='accuracy against speed' src='data:image/png;base64,{png}'></p>")
    return html_


def write_card(head_dir: str | Path, workdir: str | Path, speed: dict | None = None, n_gallery: int = 12,
               speed_chart: str | Path | None = None, name: str | None = None, data_note: str | None = None) -> Path:
    """Write <head_dir>/card.html from the head's report, CV probabilities and saved model; speed: img/s figures
    measured by the benchmark (name -> value) and speed_chart: a PNG of candidate models' accuracy against speed
    (bench/speed_accuracy.py), shown when given; name: the model's name (default the folder's); n_gallery: faces
    shown per gallery of errors (0: none, for a card that is shipped); data_note: a paragraph on the training data
    and its licence."""
    from genderfusion.extract.sources.base import library_versions

    from genderfusion.fusion.model.classifier import FusionClassifier
    from genderfusion.fusion.model.model_file import FILE_NAME, read_file

    head_dir, ws = Path(head_dir), Workspace(workdir)
    report = read_json(head_dir / "report.json")
    cv = np.load(head_dir / "cv_probs.npz")
    clf = FusionClassifier.from_bytes(read_file(head_dir / FILE_NAME), head_dir / FILE_NAME)
    ids, y = [str(i) for i in cv["ids"]], cv["y"].astype(int)
    key = report["best_method"]
    p = cv[key]
    data = ws.bound_data()
    ages, races = (None, None) if data is None else data.meta_of(np.array(ids))
    masks = {"all": np.ones(len(y), bool), **group_masks(ages, races)}
    rows = {f"{r['method']} [{r['protocol']}]": r for r in report["rows"]}
    vote_key = next((k for k in rows if k.startswith("weighted-vote")), None)
    heads = set(report.get("heads", []))
    singles = [k for k, r in rows.items() if r["method"].split(" ")[0] not in heads | {"vote", "weighted-vote"}]
    single_key = max(singles, key=lambda k: rows[k]["accuracy"]) if singles else None
    groups, accs = _group_accuracies(cv, y, p, masks, (key, vote_key, single_key))
    band = tuple(report["doubtful_band"])
    calib, ece = calibration(y, p)
    plots = _plots(y, p, band, groups, accs, calib, coverage_curve(y, p))
    errors = np.flatnonzero((p >= 0.5) != y)
    confident = errors[np.argsort(-np.abs(p[errors] - 0.5))][:n_gallery]
    doubtful = np.flatnonzero((p >= band[0]) & (p <= band[1]))
    doubtful = doubtful[np.argsort(np.abs(p[doubtful] - 0.5))][:n_gallery]
    folder = data.train.folder if data is not None else None
    group_rows = [[g, accs[g]["n"], _f(accs[g]["model"]), f"{_f(accs[g]['lo'])}–{_f(accs[g]['hi'])}",
                   _f(accs[g]["vote"]), _f(accs[g]["source"])] for g in groups]
    group_attrs = [f"data-group='{html.escape(g)}' data-accuracy='{accs[g]['model']:.6f}'" for g in groups]
    limits = _limits(report, len(y), groups, accs, band, ece)
    speed_html = _speed_html(speed, speed_chart)
    versions = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    n_fem = int(y.sum())
    data_html = f"<h2>Training data and licence</h2>\n<p>{html.escape(data_note)}</p>\n" if data_note else ""
    gallery_html = ("<h2>Faces it gets wrong</h2>\n"
                    + _gallery("Most confident out-of-fold errors", confident, ids, y, p, ages, folder) + "\n"
                    + _gallery("Doubtful faces (closest to 0.5)", doubtful, ids, y, p, ages, folder)) if n_gallery else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model card: {html.escape(name or head_dir.name)}</title>
<style>{CSS}</style></head><body>
<h1>Model card: {html.escape(name or head_dir.name)}</h1>
<p class="muted">genderfusion; written {dt.date.today().isoformat()}; {html.escape(versions)}</p>
<h2>What it is</h2>
<p>Head <b>{html.escape(clf.head)}</b>, protocol <b>{html.escape(clf.protocol)}</b>{_second_stage(clf)}, over {len(clf.recipes_)} source(s),
{clf.k_} folds. Trained on <b>{len(y)}</b> faces: {len(y) - n_fem} male, {n_fem} female ({n_fem / len(y):.1%}).</p>
{_cascade(report)}
{_table(["source", "kind", "network", "layer", "pooling", "input px", "mean / std", "weights sha256"], _source_rows(clf))}
<h2>Out-of-fold accuracy</h2>
<p>Every figure is on rows that neither the backbones nor the head trained on. This model:
<b id="cv-accuracy">{report['best_cv_accuracy']:.4f}</b>; weighted vote {_f(rows[vote_key]['accuracy'] if vote_key else math.nan)};
best single source ({html.escape(single_key or '-')}) {_f(rows[single_key]['accuracy'] if single_key else math.nan)}.</p>
{_table(["group", "faces", "accuracy", "95 % interval", "weighted vote", "best source"], group_rows, group_attrs)}
<p class="plots"><img alt="accuracy by group" src="data:image/png;base64,{plots['groups']}"></p>
<h2>Calibration and doubt</h2>
<p>Expected calibration error <b id="ece">{ece:.4f}</b> (10 bins).</p>
<p class="plots"><img alt="reliability diagram" src="data:image/png;base64,{plots['calibration']}">
<img alt="P(female) histogram" src="data:image/png;base64,{plots['histogram']}"></p>
<p class="plots"><img alt="accuracy against coverage" src="data:image/png;base64,{plots['coverage']}"></p>
<h2>Speed</h2>
{speed_html}
<h2>Limits</h2>
<ul>{''.join(f'<li>{html.escape(t)}</li>' for t in limits)}</ul>
{data_html}{gallery_html}
</body></html>
"""
    out = head_dir / "card.html"
    write_text(out, page)
    return out
