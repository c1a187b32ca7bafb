"""`predict --images` on any photos and FusionClassifier.predict_frame: rows per image, batches, bad files."""
import csv
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from genderfusion.fusion.model.classifier import FusionClassifier
from genderfusion.fusion.photos.inputs import expand_paths
from genderfusion.fusion.predict.options import PhotoOptions
from genderfusion.fusion.predict.table import PhotoJob, predict_images

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def model(synth_master, tmp_path_factory, cnn_small_workspace):
    """A saved per-fold fusion model over a 2-fold cnn-small, and a folder of 12 photos."""
    root = tmp_path_factory.mktemp("photos")
    ws = cnn_small_workspace(synth_master, root / "ws")
    clf = FusionClassifier(["cnn-small"], "logistic", "per-fold", workdir=ws).fit()
    clf.save(ws / "heads" / "mine" / "model.safetensors")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    files = sorted((synth_master / "test").glob("*.jpg"))
    for i, f in enumerate(files):
        shutil.copy(f, photos / ("sub" if i % 3 == 0 else "") / f.name)
    return ws, photos, files


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_images_streams_batches_and_matches_predict_proba(model, tmp_path):
    ws, photos, files = model
    clf = FusionClassifier.load(ws / "heads/mine/model.safetensors")
    whole = PhotoOptions("whole")  # blobs, not faces: each taken whole
    one = predict_images(clf, PhotoJob.plan([photos], tmp_path / "a.csv"), whole, progress=False)
    many = predict_images(clf, PhotoJob.plan([photos], tmp_path / "b.csv"), PhotoOptions("whole", batch_size=5),
                          progress=False)
    a, b = _read(tmp_path / "a.csv"), _read(tmp_path / "b.csv")
    assert one["images"] == many["images"] == len(files) == 12 and list(a[0]) == [
        "path", "face", "left", "top", "right", "bottom", "p_female", "label", "doubtful", "stage", "rule", "error"]
    assert {r["rule"] for r in a} == {"whole"} and {r["face"] for r in a} == {"0"}
    assert [r["path"] for r in a] == [str(p) for p in expand_paths([photos])]  # sorted, recursive
    ref = FusionClassifier.load(ws / "heads/mine/model.safetensors").predict_proba([r["path"] for r in a])[:, 1]
    for got in (a, b):
        assert np.abs(np.array([float(r["p_female"]) for r in got]) - ref).max() <= 1e-5
        assert [int(r["label"]) for r in got] == [int(q >= 0.5) for q in ref]
        assert [int(r["doubtful"]) for r in got] == [int(0.45 <= q <= 0.55) for q in ref]
        assert {r["stage"] for r in got} == {"1"}  # no second stage in this model


def test_a_bad_photo_stops_the_run_or_is_written_with_its_error(model, tmp_path):
    ws, photos, _ = model
    bad = shutil.copytree(photos, tmp_path / "photos")
    (bad / "zz_broken.jpg").write_bytes(b"not a jpeg")
    clf = FusionClassifier.load(ws / "heads/mine/model.safetensors")
    with pytest.raises(Exception, match="zz_broken.jpg"):
        predict_images(clf, PhotoJob.plan([bad], tmp_path / "out.csv"),
                       PhotoOptions("whole", batch_size=5, skip_bad=False), progress=False)
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob(".out.csv*"))  # nothing half-written
    out = predict_images(clf, PhotoJob.plan([bad], tmp_path / "out.csv"),
                         PhotoOptions("whole", batch_size=5, skip_bad=True), progress=False)
    rows = _read(tmp_path / "out.csv")
    assert out["unreadable"] == 1 and out["no_face"] == 0 and out["faces"] == 12 and len(rows) == 13
    broken = [r for r in rows if r["path"].endswith("zz_broken.jpg")][0]
    assert all(broken[c] == "" for c in ("face", "left", "top", "right", "bottom", "p_female", "label", "doubtful",
                                         "stage", "rule")) and "zz_broken.jpg" in broken["error"]  # empty, no -1
    assert all(r["error"] == "" and r["p_female"] for r in rows if r is not broken)


def test_predict_frame_has_the_same_rows(model):
    ws, photos, files = model
    clf = FusionClassifier.load(ws / "heads/mine/model.safetensors")
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files[:3]]
    frame = clf.predict_frame([str(files[0]), *arrays], faces="whole")
    assert list(frame.columns) == ["path", "face", "left", "top", "right", "bottom", "p_female", "label", "doubtful",
                                   "stage", "rule", "error"] and len(frame) == 4
    assert frame["path"].tolist() == [str(files[0]), "<image 1>", "<image 2>", "<image 3>"]
    assert np.allclose(frame["p_female"], clf.predict_proba([str(files[0]), *arrays])[:, 1], atol=1e-6)
    assert np.isclose(frame["p_female"][0], frame["p_female"][1], atol=1e-6)  # the same photo, as path and array
    bad = clf.predict_frame([str(files[0]), "/no/such.jpg"], skip_bad=True, faces="whole")
    assert bad["label"].isna().tolist() == [False, True] and "no/such.jpg" in bad["error"][1]
    assert bad["p_female"].isna()[1] and bad["face"].isna()[1] and bad["doubtful"].isna()[1]
    assert str(bad["label"].dtype) == "Int64" and str(bad["doubtful"].dtype) == "boolean"
    assert bad["label"].mean() == bad["label"][0]  # the unreadable row is not counted as data


@pytest.mark.parametrize("args,message", [
    (["--images", "/no/such/folder"], "/no/such/folder: no such file or folder"),
    (["--images", "EMPTY"], "EMPTY: no images in this folder"),
    (["--images", "/no/*.jpg"], "/no/\\*.jpg: no file matches this pattern"),
    (["--images", "PHOTOS", "--model", "no-such-model"], "no-such-model"),
])
def test_bad_paths_and_models_are_one_line_and_exit_2(model, tmp_path, args, message):
    ws, photos, _ = model
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else str(photos) if a == "PHOTOS" else a for a in args]
    message = message.replace("EMPTY", str(tmp_path / "empty"))
    if "--model" not in args:
        args += ["--model", "mine"]
    r = subprocess.run([sys.executable, "-m", "genderfusion", "predict", *args, "--workdir", str(ws),
                        "--out", str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    import re

    assert re.search(message, r.stderr), r.stderr


def test_a_text_file_lists_photos_and_parquet_needs_pyarrow(model, tmp_path):
    ws, photos, files = model
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(f) for f in files[:4]) + "\n")
    assert expand_paths([listing]) == files[:4]
    clf = FusionClassifier.load(ws / "heads/mine/model.safetensors")
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(ValueError, match="Parquet needs pyarrow"):
            predict_images(clf, PhotoJob.plan([listing], tmp_path / "p.parquet"), progress=False)
        assert not (tmp_path / "p.parquet").exists()
    else:
        predict_images(clf, PhotoJob.plan([listing], tmp_path / "p.parquet"), progress=False)
        assert len(pd.read_parquet(tmp_path / "p.parquet")) == 4


def test_the_doubtful_band_is_the_models_unless_one_is_given(model):
    """One options object (PhotoOptions): its band defaults to the model's, as in predict_details."""
    ws, photos, files = model
    clf = FusionClassifier.load(ws / "heads/mine/model.safetensors")
    clf.band = (0.0, 1.0)  # every P(female) is inside the model's band
    assert PhotoOptions("whole").band_of(clf) == (0.0, 1.0)
    frame = clf.predict_frame(files[:4], faces="whole")
    assert frame["doubtful"].all()
    p = frame["p_female"].to_numpy()
    narrow = clf.predict_frame(files[:4], faces="whole", band=(0.0, 0.0))["doubtful"].to_numpy()
    assert (narrow == (p <= 0.0)).all() and not narrow.all()
    assert (clf.predict_details(files[:4])["doubtful"] == frame["doubtful"].to_numpy()).all()
