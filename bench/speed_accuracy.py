"""Speed against accuracy of candidate fusion models: CV accuracy (their report.json) against warm
FusionClassifier.predict img/s on the same test images, one point per model; a PNG chart and a JSON.

    python bench/speed_accuracy.py --workdir data/bench-cpu --models best,fast --n 512 --out bench/results/cpu_speed_accuracy
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `bench`; genderfusion comes from the install

from bench.predict_speed import measure, test_paths  # noqa: E402

from genderfusion.files.atomic import atomic_path, write_json  # noqa: E402
from genderfusion.files.json_files import read_json  # noqa: E402
from genderfusion.extract.data.workspace import Workspace  # noqa: E402


def chart(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        ax.scatter(p["predict_img_per_s"], p["cv_accuracy"], color="#1f77b4")
        ax.annotate(f"{p['model']}\n{p['method']}", (p["predict_img_per_s"], p["cv_accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(5, 3))
    ax.set_xscale("log")
    ax.set_xlabel("FusionClassifier.predict, warm (img/s, 2 cores; log scale)")
    ax.set_ylabel("5-fold CV accuracy")
    ax.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--models", required=True, help="comma-separated model names under <workdir>/heads/")
    p.add_argument("--data", default=None, help="competition folder (default: the workspace's)")
    p.add_argument("--n", type=int, default=512, help="test images per predict call")
    p.add_argument("--out", required=True, help="output stem: <out>.json and <out>.png")
    args = p.parse_args(argv)
    ws = Workspace(args.workdir)
    data = Path(args.data) if args.data else ws.bound_data().root
    paths = test_paths(data, args.n)
    points = []
    for name in args.models.split(","):
        report = read_json(ws.head_dir(name) / "report.json")
        speed = measure(str(ws.head_model(name)), paths)
        points.append({"model": name, "method": report["best_method"], "sources": report["features"],
                       "cv_accuracy": report["best_cv_accuracy"], "predict_img_per_s": speed["warm_img_per_s"]})
        print(f"{name}: {report['best_method']} on {','.join(report['features'])}: CV {report['best_cv_accuracy']:.4f}"
              f", {speed['warm_img_per_s']} img/s", flush=True)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), points)
    chart(points, out.with_suffix(".png"))
    return points


if __name__ == "__main__":
    main()
