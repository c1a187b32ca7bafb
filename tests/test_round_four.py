"""Reliability round four, case by case (numbered as in the issue): a user's files are never replaced, nothing hangs
on a special file, a crafted or broken model file is refused naming what is wrong before it predicts, and `serve`
answers hostile requests with a 4xx in one line. Each case failed on 0.3.0."""
import hashlib
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genderfusion.fusion.model import model_file
from genderfusion.fusion.model.classifier import FusionClassifier
from genderfusion.fusion.model.model_file import ModelFileError

from conftest import fails, sha

DEFAULT_GFM = Path(__file__).resolve().parents[1] / "genderfusion" / "default" / "model.gfm"


def predict_main(argv):
    from genderfusion.cli.predict_command import predict_main as main

    main(argv)


def _photo(path: Path, size=(240, 200), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


# ---- lost: a user's files replaced (1-3) -----------------------------------------------------------------------
def test_01_draw_into_the_input_folder_is_refused_and_the_photos_unchanged(tmp_path, capsys):
    album = tmp_path / "album"
    album.mkdir()
    photos = [_photo(album / "me.jpg"), _photo(album / "trip.jpg", seed=1)]
    before = [sha(p) for p in photos]
    line = fails(predict_main, ["--images", str(album), "--draw", str(album), "--out", str(tmp_path / "p.csv")],
                 capsys)
    assert "holds the input" in line and "me.jpg" in line
    assert [sha(p) for p in photos] == before and not (tmp_path / "p.csv").exists()


def test_02_a_drawn_name_that_exists_is_refused_unless_overwrite(tmp_path, capsys):
    from genderfusion.fusion.photos.drawing import drawn_names

    (tmp_path / "pngs").mkdir()
    (tmp_path / "mine").mkdir()
    png = _photo(tmp_path / "pngs" / "holiday.png")
    mine = _photo(tmp_path / "mine" / "holiday.jpg", seed=3)
    before = sha(mine)
    line = fails(predict_main, ["--images", str(png), "--draw", str(tmp_path / "mine"), "--out",
                                str(tmp_path / "p.csv")], capsys)
    assert f"{mine} exists and this run did not write it" in line and "--overwrite" in line
    assert sha(mine) == before
    assert drawn_names(tmp_path / "mine", [png], overwrite=True) == {str(png): mine}
    with pytest.raises(ValueError, match="holds the input"):  # never an input, even with overwrite
        drawn_names(tmp_path / "pngs", [png], overwrite=True)
    assert list(drawn_names(tmp_path / "d", ["a/x.jpg", "b/x.png", "c/X.jpg"]).values()) == [
        tmp_path / "d/x.jpg", tmp_path / "d/x-2.jpg", tmp_path / "d/X-3.jpg"]


@pytest.mark.parametrize("default", ["predictions.csv", "submission.csv", "submission_details.csv"])
def test_03_a_default_output_that_exists_is_refused(tmp_path, capsys, monkeypatch, default):
    monkeypatch.chdir(tmp_path)
    photo = _photo(tmp_path / "photo.jpg")
    Path(default).write_text("mine\n")
    argv = ["--images", str(photo)] if default == "predictions.csv" else ["--data", str(tmp_path)]
    line = fails(predict_main, argv, capsys)
    assert line == (f"error: {default} exists and this run did not write it: name another file with --out, or pass "
                    "--overwrite to replace it")
    assert Path(default).read_text() == "mine\n"


# ---- hang (4), unbounded reads (14), special files among the photos (25), an empty path (9) ----------------------
@pytest.mark.parametrize("what", ["fifo", "dev-zero", "folder"])
def test_04_14_a_model_that_is_not_a_regular_file_is_refused_unread(tmp_path, capsys, what):
    path = {"fifo": tmp_path / "fifo.safetensors", "dev-zero": Path("/dev/zero"),
            "folder": tmp_path / "x.gfm"}[what]
    if what == "fifo":
        os.mkfifo(path)
    elif what == "folder":
        path.mkdir()
    with pytest.raises((ModelFileError, FileNotFoundError), match=r"named pipe|character device|no fusion model"):
        FusionClassifier.load(path)


def test_04_25_09_special_files_and_empty_paths_among_the_photos(tmp_path, capsys):
    os.mkfifo(tmp_path / "x.jpg")
    out = tmp_path / "p.csv"
    line = fails(predict_main, ["--images", str(tmp_path / "x.jpg"), "--out", str(out), "--no-progress", "--strict"],
                 capsys)
    assert "x.jpg: cannot decode image (a named pipe (FIFO), not an image file; not read)" in line
    line = fails(predict_main, ["--images", "/dev/zero", "--out", str(out)], capsys)
    assert line == "error: /dev/zero: a character device, not an image file or a folder; not read"
    line = fails(predict_main, ["--images", "", "--out", str(out)], capsys)
    assert "'': an empty path" in line
    assert not out.exists()


# ---- silent wrong results: crafted model files (5, 6, 11, 13, 28) ---------------------------------------------
@pytest.fixture(scope="module")
def state():
    """The shipped model's state (JSON, arrays), read from its .gfm (no network is built)."""
    from genderfusion.fusion.model.export import read_export

    data, _ = read_export(DEFAULT_GFM)
    return model_file.read_state(data, "default")


def _crafted(state, change) -> bytes:
    """The model file an attacker (or a broken run) writes: the state changed, its sha256 recomputed."""
    meta, arrays = json.loads(json.dumps(state[0])), {k: v.copy() for k, v in state[1].items()}
    change(meta, arrays)
    model_json = json.dumps(meta).replace('"DEEP"', "[" * 5000 + "]" * 5000)  # json.dumps cannot nest so deep
    return model_file._safetensors(arrays, {"format": model_file.FORMAT, "genderfusion": "0.3.0", "model": model_json,
                                            "sha256": model_file._digest(model_json, arrays)})


def _set(path: str, value):
    def change(meta, arrays):
        *where, last = path.split(".")
        node = meta
        for key in where:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change


def _array(name: str, how):
    def change(meta, arrays):
        how(arrays[name])
    return change


CRAFTED = {
    "nan-weight": (_array("heads_.0.net.1.weight", lambda a: a.__setitem__((0, 0), np.nan)),
                   r"tensor heads_.0.net.1.weight holds 1 NaN or infinite"),
    "inf-bias": (_array("heads_.0.net.4.bias", lambda a: a.fill(np.inf)), r"tensor heads_.0.net.4.bias holds 1 NaN"),
    "zero-scale": (_array("heads_.0.scaler_.scale_", lambda a: a.__setitem__(3, 0.0)),
                   r"heads_.0.scaler_.BlockScaler: scale_ holds 1 value\(s\) that are not above 0"),
    "threshold-2": (_set("params.threshold", 2), r"params.threshold: 2, outside \(0, 1\)"),
    "threshold-nan": (_set("params.threshold", math.nan), r"params.threshold: nan, not a finite number"),
    "threshold-string": (_set("params.threshold", "0.5"), r"params.threshold: '0.5', not a finite number"),
    "band-reversed": (_set("params.band", [0.6, 0.4]), r"params.band: \[0.6, 0.4\], a reversed band"),
    "missing-backbone": (_set("recipes_.0.backbone", KeyError), r"recipes_.0.backbone: missing"),
    "hidden-negative": (_set("heads_.0.params.hidden", -1), r"heads_.0.params.hidden: -1, outside 1..65536"),
    "hidden-huge": (_set("heads_.0.params.hidden", 10**9), r"heads_.0.params.hidden: 1000000000, outside"),
    "features-huge": (_set("heads_.0.n_features_in_", 10**9), r"heads_.0.n_features_in_: 1000000000, outside"),
    "hidden-mismatch": (_set("heads_.0.params.hidden", 512), r"first layer of shape \(256, 1168\) for hidden 512"),
    "bogus-head": (_set("params.head", "svm"), r"params.head: 'svm', not one of logistic, mlp, knn"),
    "bogus-protocol": (_set("params.protocol", "magic"), r"params.protocol: 'magic', not one of"),
    "names-swapped": (lambda m, a: m["source_names_"].reverse(), r"source_names_ .* are not the sources the recipes"),
    "deep-json": (_set("params.head_params", "DEEP"), r"nested 500\d deep, above the bound of 64"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_05_06_13_crafted_metadata_is_refused_naming_the_field(state, case):
    change, message = CRAFTED[case]
    with pytest.raises(ModelFileError, match=message):
        FusionClassifier.from_bytes(_crafted(state, change), "crafted.safetensors")


def test_05_the_untouched_state_loads(state):
    clf = FusionClassifier.from_bytes(_crafted(state, lambda m, a: None), "same")
    assert clf.threshold == 0.5 and clf.band == (0.45, 0.55)


def test_05_a_prediction_that_is_not_finite_gets_no_label(state):
    clf = FusionClassifier.from_bytes(_crafted(state, lambda m, a: None), "same")
    clf.cascade_ = None
    clf._stages = lambda outputs: (np.array([0.3, np.nan]), np.array([0.3, np.nan]))
    with pytest.raises(ValueError, match=r"P\(female\) is not a finite number for 1 of 2 row\(s\) \(row 1: nan\)"):
        clf._decide(lambda idx, rows: [], 2)
    with pytest.raises(ValueError, match=r"band: \[0.7, 0.2\], a reversed band"):
        clf._decide(lambda idx, rows: [], 2, band=(0.7, 0.2))


# ---- .gfm archives (7, 28) -------------------------------------------------------------------------------------
def _entries(gfm: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(gfm) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _zip(path: Path, entries) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return path


def test_07_a_gfm_with_an_entry_twice_is_refused(tmp_path):
    from genderfusion.fusion.model.export import read_export

    entries = _entries(DEFAULT_GFM)
    model = dict(entries)["model.safetensors"]
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = _zip(tmp_path / "dup.gfm", [*entries, ("model.safetensors", model[:-8] + bytes(8))])
    with pytest.raises(ModelFileError, match="holds the entry model.safetensors twice"):
        read_export(path)


@pytest.mark.parametrize("case,message", [
    ("v1", r"made by genderfusion 0.1.0 or earlier .*its model entry is a pickle"),
    ("dotdot", r"manifest.json lists the entry '../../x', not a plain name"),
])
def test_28_manifest_errors_are_named_as_what_they_are(tmp_path, case, message):
    from genderfusion.fusion.model.export import read_export

    entries = dict(_entries(DEFAULT_GFM))
    manifest = json.loads(entries["manifest.json"])
    if case == "v1":
        manifest["format"] = "genderfusion-export-v1"
    else:
        manifest["entries"]["../../x"] = {"bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest()}
    entries["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(ModelFileError, match=message) as exc:
        read_export(_zip(tmp_path / "m.gfm", entries.items()))
    assert "not valid JSON" not in str(exc.value)


# ---- 8, 27: the converted FaceRes in the cache -------------------------------------------------------------------
def _faceres_available() -> bool:
    from genderfusion.extract.faces.faceres import missing_files

    return not missing_files("faceres-deep")


@pytest.mark.skipif(not _faceres_available(), reason="needs FaceRes (fetch-faceres)")
def test_08_27_a_changed_cached_onnx_is_converted_again_and_a_read_only_cache_converts_in_memory(
        tmp_path, monkeypatch, caplog):
    from genderfusion.extract.faces import faceres

    monkeypatch.setenv("GENDERFUSION_FACERES_DIR", str(faceres.model_dir()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sha = faceres.FILES["faceres-deep.json"]
    first = faceres.onnx_model("faceres-deep", sha)
    (cached,) = (tmp_path / "cache/genderfusion/onnx").glob("*.onnx")
    cached.write_bytes(b"garbage")
    caplog.set_level("WARNING")
    assert faceres.onnx_model("faceres-deep", sha) == first
    assert "not the file this package wrote" in caplog.text and cached.read_bytes() == first
    monkeypatch.setattr(faceres, "MAX_ONNX", len(first) - 1)  # a cached file beyond the bound is not read
    cached.write_bytes(b"x" * len(first))
    assert faceres.onnx_model("faceres-deep", sha) == first and cached.read_bytes() == first
    monkeypatch.setattr(faceres, "MAX_ONNX", 2**28)
    cached.unlink()
    cached.parent.chmod(0o555)
    try:
        if os.access(cached.parent, os.W_OK):  # root ignores the mode: a file where the folder would be
            cached.parent.chmod(0o755)
            monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
            (tmp_path / "file").write_text("not a folder")
        assert faceres.onnx_model("faceres-deep", sha) == first
        assert faceres.onnx_model("faceres-deep", sha) == first
    finally:
        cached.parent.chmod(0o755)
    assert caplog.text.count("converted in memory") == 1


# ---- 10: images with no face under --faces auto -------------------------------------------------------------
def test_10_pictures_without_a_face_get_no_face_not_a_label():
    from skimage import data

    from genderfusion.extract.faces.detect import FaceDetector
    from genderfusion.fusion.photos.faces import faces_of

    detector = FaceDetector("hog")
    for name, image in {"cat": data.chelsea()[:300, 60:360], "blank gif": np.full((32, 32, 3), 255, np.uint8),
                        "1x1": np.zeros((1, 1, 3), np.uint8), "10x10": np.full((10, 10, 3), 9, np.uint8),
                        "uniform": np.full((200, 200, 3), 128, np.uint8)}.items():
        assert faces_of(image, "auto", detector) == [], name
    face = np.asarray(Image.fromarray(data.astronaut()[20:240, 130:350]).resize((200, 200)))
    assert len(faces_of(face, "auto", detector)) == 1  # a face crop still is one face


# ---- 15, 16, 26: arguments the machine cannot serve ------------------------------------------------------------
def test_15_a_min_face_below_what_the_detector_serves_is_refused(tmp_path, capsys):
    line = fails(predict_main, ["--images", str(_photo(tmp_path / "a.jpg")), "--min-face", "1", "--out",
                                str(tmp_path / "p.csv")], capsys)
    assert "min_face 1: below 12 px" in line


def test_16_serve_checks_its_port_before_loading_the_model(capsys):
    from genderfusion.cli.serve_command import serve_main

    line = fails(serve_main, ["--port", "70000", "--model", "/nonexistent"], capsys)
    assert "argument --port: '70000' is not a port number from 1 to 65535" in line


def test_26_workers_are_capped_at_the_cores_with_a_line(caplog):
    from genderfusion.cli.arguments import capped_workers

    caplog.set_level("WARNING")
    assert capped_workers(10000) == (os.cpu_count() or 1)
    assert f"--workers 10000: capped at {os.cpu_count() or 1}" in caplog.text


# ---- 11: metadata that names the wrong networks -----------------------------------------------------------------
@pytest.mark.skipif(not _faceres_available(), reason="needs FaceRes (fetch-faceres)")
def test_11_sources_swapped_in_the_metadata_are_refused_by_the_probe(state, tmp_path):
    def swap(meta, arrays):  # both lists, so that names and recipes agree
        for key in ("source_names_", "recipes_"):
            meta[key][0], meta[key][1] = meta[key][1], meta[key][0]
        meta["params"]["sources"] = list(meta["source_names_"])

    photo = _photo(tmp_path / "a.jpg", size=(200, 200))
    same = FusionClassifier.from_bytes(_crafted(state, lambda m, a: None), "same")
    same.exported_ = str(DEFAULT_GFM)
    assert same.probe_ is not None and len(same.probe_) == 3
    p = same.predict_proba(str(photo))  # the untouched model passes its own check
    assert 0 <= p[0, 1] <= 1
    swapped = FusionClassifier.from_bytes(_crafted(state, swap), "swapped")
    swapped.exported_ = str(DEFAULT_GFM)
    with pytest.raises(ModelFileError, match=r"source gender-cnn-frozen-noalign-flip: the network built from the "
                                             r"model's metadata gives features of shape \(1, 1, 16\) on the probe "
                                             r"image, the model was trained on \(1, 1, 128\)"):
        swapped.predict_proba(str(photo))
    reverse = _array("probe.2", lambda a: a.__setitem__(..., a[..., ::-1].copy()))  # the stored features' order
    other = FusionClassifier.from_bytes(_crafted(state, reverse), "other")
    other.exported_ = str(DEFAULT_GFM)
    with pytest.raises(ModelFileError, match=r"source faceres-deep-pooling-flip: its features of the probe image "
                                             r"differ from the ones stored at training by \d"):
        other.predict_proba(str(photo))


def test_11_train_head_stores_the_probe_and_a_workspace_model_passes_it(work):
    from conftest import SOURCES
    from genderfusion.fusion.training.train_head import HeadTraining, train_head

    data_dir, ws = work
    train_head(ws, HeadTraining(SOURCES, ["logistic"], ("global",)), log=lambda m: None)
    clf = FusionClassifier.load(ws / "heads/fusion")
    assert [p.shape[0] for p in clf.probe_] == [2, 1]  # cnn-small: a space per fold; the frozen source: one
    photo = sorted((data_dir / "test").glob("*.jpg"))[0]
    assert clf.predict_proba(str(photo)).shape == (1, 2)
    clf.probe_[1] = clf.probe_[1] * 1.5
    clf._probed = False
    with pytest.raises(ModelFileError, match="differ from the ones stored at training by 0.333"):
        clf.predict_proba(str(photo))
