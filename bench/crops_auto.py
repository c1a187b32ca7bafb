"""`--faces auto` on the competition's test crops gives the labels `--faces whole` gives: how often, and which rule
decided (the one face fills the crop, a crop-like photo without a face found, or a detected face box).

    python bench/crops_auto.py --data ../shared/data/faces          # every test crop; bench/results/crops_auto.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=None, help="only the first N test crops")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "crops_auto.json"))
    args = p.parse_args(argv)
    from genderfusion import FusionClassifier

    clf = FusionClassifier.load(args.model)
    paths = [str(x) for x in sorted((Path(args.data) / "test").glob("*.jpg"))][: args.n]
    t = time.time()
    whole = clf.predict_frame(paths, faces="whole", workers=2)
    t_whole = time.time() - t
    t = time.time()
    auto = clf.predict_frame(paths, faces="auto", workers=2, skip_bad=True)
    t_auto = time.time() - t
    first = auto[(auto["face"] <= 0).fillna(True)].set_index("path")  # a photo's first face, or its one row
    labels = first["label"].reindex(whole["path"]).to_numpy()
    same = labels == whole["label"].to_numpy()
    rules = first["rule"].replace("", "no face").value_counts().to_dict()
    per_rule = {r: {"images": int((first["rule"] == r).sum()),
                    "same_label": round(float(same[(first["rule"].reindex(whole["path"]) == r).to_numpy()].mean()), 4)}
                for r in rules if r != "no face"}
    result = {"images": len(paths), "same_label": round(float(same.mean()), 5), "different": int((~same).sum()),
              "rules": {str(k): int(v) for k, v in rules.items()}, "by_rule": per_rule,
              "photos_with_several_faces": int((auto.groupby("path")["face"].max() > 0).sum()),
              "seconds_whole": round(t_whole, 1), "seconds_auto": round(t_auto, 1), "model": args.model,
              "command": "python bench/crops_auto.py --data ../shared/data/faces"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
