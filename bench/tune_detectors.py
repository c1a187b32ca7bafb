"""The CNN detectors' constants, chosen on hard scenes of seed 1, apart from the reported run (seed 0): recall and
false detections per photo at each final score threshold (blazeface.SCORE; MTCNN's O-Net threshold), and for
MTCNN the pyramid's step (mtcnn.FACTOR) and its first two stages' thresholds, with the time they take. False
detections are also counted on the pictures scikit-image ships and their mirror images (natural textures the
synthetic scenes lack; in the astronaut and the cameraman, anything but their own face).

    python bench/tune_detectors.py --data ../shared/data/faces      # 40 scenes -> bench/results/tune_detectors.json
    python bench/tune_detectors.py --data ../shared/data/faces --steps 100   # MTCNN's pyramid steps: recall and
                                              # accuracy of the whole pipeline on 100 scenes (-> the same .json)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from scenes import crop_labels, match  # noqa: E402
from scenes_hard import make_scenes  # noqa: E402

SCENES_DIR = ROOT / "data" / "scenes_hard_1"  # the tuning scenes (seed 1)
THRESHOLDS = {"blazeface": (0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "mtcnn": (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)}
# MTCNN: (pyramid step, P-Net's and R-Net's thresholds): the paper's, a sparser pyramid, and laxer first stages
MTCNN_CONFIGS = ((0.709, 0.6, 0.7), (0.6, 0.6, 0.7), (0.6, 0.5, 0.5), (0.6, 0.4, 0.4), (0.5, 0.4, 0.4),
                 (0.4, 0.4, 0.4))


PICTURES = ("astronaut", "camera", "brick", "chelsea", "coffee", "coins", "colorwheel", "grass", "gravel", "horse",
            "hubble_deep_field", "logo", "moon", "page", "retina", "rocket", "text", "immunohistochemistry", "cell")
KNOWN_FACES = {"astronaut": [170, 55, 275, 180], "camera": [190, 110, 260, 180]}  # by eye


def pictures() -> list[tuple[dict, object]]:
    """(truth as a scene: its one face or none, the picture) for each picture and its mirror image."""
    import numpy as np
    from skimage import data

    out = []
    for name in PICTURES:
        im = np.asarray(getattr(data, name)())
        if im.dtype != np.uint8:
            im = (im / max(1, im.max()) * 255).astype(np.uint8)
        im = np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im[..., :3]
        w = im.shape[1]
        for mirrored in (False, True):
            face = KNOWN_FACES.get(name)
            if face and mirrored:
                face = [w - face[2], face[1], w - face[0], face[3]]
            truth = {"faces": [{"box": face}] if face else []}
            out.append((truth, np.ascontiguousarray(im[:, ::-1] if mirrored else im)))
    return out


def sweep(scenes: list[dict], found: list[list], thresholds) -> dict:
    out = {}
    for t in thresholds:
        hits = false = faces = 0
        for s, f in zip(scenes, found):
            kept = [(box, 0) for box, score in f if score >= t]
            m = match(s["faces"], kept)
            faces += len(m)
            hits += sum(lab is not None for _, lab in m)
            false += len(kept) - sum(lab is not None for _, lab in m)
        out[str(t)] = {"recall": round(hits / faces, 4), "false_per_photo": round(false / len(scenes), 3)}
    return out


STEPS = (0.6, 0.5)  # MTCNN pyramid steps compared by --steps


def pyramid_steps(data: Path, n: int, min_face: int) -> dict:
    """For each of STEPS: recall and accuracy of found faces (the model in this process, as scenes_hard measures
    them) on the first n scenes of seed 1. Recall alone does not show how well a step's boxes frame the faces."""
    from scenes_hard import run_ours, score

    from genderfusion import FusionClassifier
    from genderfusion.extract.faces import mtcnn

    scenes = make_scenes(data, SCENES_DIR, n, seed=1)
    paths = [SCENES_DIR / s["file"] for s in scenes]
    clf = FusionClassifier.load("default")
    crop_label = crop_labels(clf, scenes, data)
    out, kept = {"scenes": n, "min_face": min_face}, mtcnn.FACTOR
    try:
        for step in STEPS:
            mtcnn.FACTOR = step
            found, seconds = run_ours(clf, paths, "mtcnn", min_face, 1)  # one process: the step set here holds
            r = score(scenes, found, crop_label, seconds)
            out[str(step)] = {k: r[k] for k in ("photos_per_s", "recall", "false_per_photo", "accuracy")}
            print(step, json.dumps(out[str(step)]), flush=True)
    finally:
        mtcnn.FACTOR = kept
    return out


def main(argv=None) -> dict:
    import torch

    from genderfusion.extract.faces import blazeface, mtcnn
    from genderfusion.extract.faces.detector_weights import load_net
    from genderfusion.fusion.photos.decode import DETECT_SIDE, decode_one

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--min-face", type=int, default=24)
    p.add_argument("--skip-blazeface", action="store_true", help="keep BlazeFace's results from the --json file")
    p.add_argument("--steps", type=int, default=0, metavar="N",
                   help="only compare MTCNN's pyramid steps on N scenes, into the results in --json")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "tune_detectors.json"))
    args = p.parse_args(argv)
    if args.steps:
        out = json.loads(Path(args.json).read_text())
        out["pyramid_steps"] = pyramid_steps(Path(args.data), args.steps, args.min_face)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return out
    torch.set_num_threads(1)
    scenes = make_scenes(Path(args.data), SCENES_DIR, args.n, seed=1)
    photos = [decode_one(str(SCENES_DIR / s["file"]), 0, DETECT_SIDE) for s in scenes]
    out = {"scenes": len(scenes), "seed": 1, "min_face": args.min_face, "processes": 1, "pictures": 2 * len(PICTURES),
           "runs": {}}
    if args.skip_blazeface:
        out["runs"]["blazeface"] = json.loads(Path(args.json).read_text())["runs"]["blazeface"]

    extra = pictures()

    def run(name: str, detect, thresholds) -> None:
        t = time.time()
        found = [[(b[:4], b[4]) for b in detect(photo).tolist() if b[2] - b[0] >= args.min_face] for photo in photos]
        seconds = time.time() - t
        on_pictures = [[(b[:4], b[4]) for b in detect(im).tolist() if b[2] - b[0] >= args.min_face]
                       for _, im in extra]
        picked = sweep([t for t, _ in extra], on_pictures, thresholds)
        out["runs"][name] = {"detect_s_per_photo": round(seconds / len(photos), 3),
                             "by_threshold": sweep(scenes, found, thresholds),
                             "false_in_pictures": {t: round(v["false_per_photo"] * len(extra)) for t, v in picked.items()}}
        print(name, json.dumps(out["runs"][name]), flush=True)

    net = load_net("blazeface", torch.device("cpu"))
    if not args.skip_blazeface:
        run("blazeface", lambda ph: blazeface.detect(net, ph, args.min_face, score=min(THRESHOLDS["blazeface"]))[0],
            THRESHOLDS["blazeface"])
    net = load_net("mtcnn", torch.device("cpu"))
    paper = (mtcnn.FACTOR, mtcnn.THRESHOLDS)
    try:
        for factor, pnet, rnet in MTCNN_CONFIGS:
            mtcnn.FACTOR = factor
            mtcnn.THRESHOLDS = (pnet, rnet, min(THRESHOLDS["mtcnn"]))
            run(f"mtcnn, pyramid step {factor}, P-Net {pnet}, R-Net {rnet}", lambda ph: net.detect(ph, args.min_face)[0],
                THRESHOLDS["mtcnn"])
    finally:
        mtcnn.FACTOR, mtcnn.THRESHOLDS = paper
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
