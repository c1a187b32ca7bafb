"""The `crop-like` rule of `--faces auto`, measured: a small square image without a face found is classified as one
face only where it looks like one (fusion.photos.faces.looks_like_face). On training crops that the detector's normal
pass misses, how many still pass; on pictures without a face (scikit-image's cat, coffee and rocket, blank, uniform
and noise squares), how many are refused. The thresholds in fusion.photos.faces were chosen here, never on the test
crops.

    python bench/crop_like.py --data ../shared/data/faces --n 6000                    # bench/results/crop_like.json
    python bench/crop_like.py --data ../shared/data/faces --n 6000 --detector mtcnn   # crop_like_mtcnn.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def no_face_pictures() -> dict[str, np.ndarray]:
    from skimage import data

    rng = np.random.default_rng(0)
    return {"cat (chelsea, 300x300)": data.chelsea()[:300, 60:360], "coffee (400x400)": data.coffee()[:400, :400],
            "rocket (400x400)": data.rocket()[:400, :400], "blank 32x32": np.full((32, 32, 3), 255, np.uint8),
            "uniform 200x200": np.full((200, 200, 3), 128, np.uint8), "1x1": np.zeros((1, 1, 3), np.uint8),
            "10x10": np.full((10, 10, 3), 60, np.uint8),
            "noise 200x200": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--n", type=int, default=6000, help="the first N training crops")
    p.add_argument("--detector", default="hog")
    p.add_argument("--json", default=None, help="default bench/results/crop_like[_DETECTOR].json")
    args = p.parse_args(argv)
    args.json = args.json or str(ROOT / "bench" / "results" /
                                 f"crop_like{'' if args.detector == 'hog' else '_' + args.detector}.json")
    from PIL import Image

    from genderfusion.extract.faces.detect import FaceDetector
    from genderfusion.fusion.photos.faces import CROP_LIKE_SCORE, faces_of

    detector = FaceDetector(args.detector, 72 if args.detector == "hog" else 24)
    t = time.time()
    missed, scores = [], []
    for path in sorted((Path(args.data) / "train").glob("*.jpg"))[: args.n]:
        image = np.asarray(Image.open(path).convert("RGB"))
        if not detector.detect(image):
            missed.append(path.name)
            rules = [f.rule for f in faces_of(image, "auto", detector)]
            score = detector.best_score(image, -2.0)  # every score (the CNNs': 0 to 1)
            scores.append({"id": path.stem, "score": None if score is None else round(score, 3),
                           "auto": rules[0] if rules else "no face"})
    kept = sum(s["auto"] == "crop-like" for s in scores)
    pictures = {name: ([f.rule for f in faces_of(im, "auto", detector)] or ["no face"])[0]
                for name, im in no_face_pictures().items()}
    picture_scores = {name: (None if min(im.shape[:2]) < 2 else round(detector.best_score(im, -2.0) or -2.0, 3))
                      for name, im in no_face_pictures().items()}
    out = {"training_crops": args.n, f"missed_by_{args.detector}": len(missed), "kept_as_crop_like": kept,
           "refused_as_no_face": len(missed) - kept, "score_floor": CROP_LIKE_SCORE[args.detector],
           "scores_of_missed": sorted(s["score"] for s in scores if s["score"] is not None),
           "pictures_without_a_face": pictures, "their_scores": picture_scores, "seconds": round(time.time() - t, 1),
           "detector": args.detector,
           "command": f"python bench/crop_like.py --data {args.data} --n {args.n} --detector {args.detector}"}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "scores_of_missed"}, indent=2))
    return out


if __name__ == "__main__":
    main()
