"""The reliability issue's second round, case by case (numbered as in the issue's table): each bad input gives one
clear line (exit 2) or the right result, and loses nothing computed before (sha256 before and after)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genderfusion.extract.cache.api import extract_features
from genderfusion.extract.errors import BadImageError, DataError, WorkspaceError
from genderfusion.extract.models.training import TrainConfig, train_backbone
from genderfusion.fusion.predict.submission import predict_submission
from genderfusion.fusion.training.train_head import HeadTraining, train_head

from conftest import fails, sha

FROZEN = dict(frozen=True, img_size=32, pool="avg", weights="random")
SOURCES = ["cnn-small", "cnn-small-frozen"]


def quiet(msg):
    pass


@pytest.fixture(scope="module")
def built(tmp_path_factory, synth_master):
    """A workspace with cnn-small (2 folds), a frozen source, a trained head `fusion` and a submission; built once."""
    root = tmp_path_factory.mktemp("built")
    data, ws = Path(shutil.copytree(synth_master, root / "comp")), root / "ws"
    train_backbone(data, TrainConfig("cnn-small", img_size=32, epochs=1, batch_size=16), ws, k=2, progress=False)
    extract_features(data, "cnn-small", ws, progress=False)
    extract_features(data, "cnn-small", ws, progress=False, **FROZEN)
    train_head(ws, HeadTraining(SOURCES, ["logistic"], protocols=("global",)), log=quiet)
    predict_submission("fusion", data, root / "sub.csv", ws)
    return root


@pytest.fixture
def pipe(built, tmp_path):
    """A private copy of `built`: (data folder, workspace, submission)."""
    root = Path(shutil.copytree(built, tmp_path / "p"))
    info = json.loads((root / "ws/workspace.json").read_text())
    info["data"] = str((root / "comp").resolve())  # the copy's workspace names the copy's data
    (root / "ws/workspace.json").write_text(json.dumps(info))
    return root / "comp", root / "ws", root / "sub.csv"


def predict_main(argv):
    from genderfusion.cli.predict_command import predict_main as main

    main(argv)


# ---- tracebacks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_01_a_truncated_or_empty_model_file(pipe, capsys, tmp_path, how):
    data, ws, sub = pipe
    model = ws / "heads/fusion/model.safetensors"
    raw = model.read_bytes()
    model.write_bytes(raw[:len(raw) // 2] if how == "truncated" else b"")
    copy = tmp_path / "x.safetensors"
    shutil.copy(model, copy)
    before = sha(sub)
    line = fails(predict_main, ["--model", str(copy), "--data", str(data), "--out", str(sub)], capsys)
    why = "damaged model file" if how == "truncated" else "not a genderfusion model file"
    assert line.startswith(f"error: {copy}: {why}")
    line = fails(predict_main, ["--model", "fusion", "--workdir", str(ws), "--data", str(data), "--out", str(sub)],
                 capsys)
    assert f"{model}: {why}" in line
    assert sha(sub) == before


def test_02_a_cache_with_a_zeroed_block_is_one_line_and_extract_rebuilds_it(pipe, capsys):
    from genderfusion.cli.extract_commands import extract_main
    from genderfusion.cli.model_commands import train_head_main

    data, ws, sub = pipe
    cache = ws / "features/cnn-small-frozen.h5"
    raw = bytearray(cache.read_bytes())
    raw[4096:8192] = bytes(4096)  # same size; without the seal, HDF5 loops forever on this file
    cache.write_bytes(bytes(raw))
    model, before = sha(ws / "heads/fusion/model.safetensors"), sha(sub)
    line = fails(train_head_main, ["--features", ",".join(SOURCES), "--workdir", str(ws), "--head", "logistic",
                                   "--protocol", "global", "--refit"], capsys)
    assert "cnn-small-frozen.h5: damaged feature cache" in line and "rerun `extract`" in line
    line = fails(predict_main, ["--model", "fusion", "--workdir", str(ws), "--data", str(data), "--out", str(sub)],
                 capsys)
    assert "cnn-small-frozen.h5: damaged feature cache" in line
    assert sha(ws / "heads/fusion/model.safetensors") == model and sha(sub) == before
    capsys.readouterr()
    extract_main(["--backbone", "cnn-small", "--frozen", "--img-size", "32", "--pool", "avg", "--weights", "random",
                  "--data", str(data), "--workdir", str(ws), "--no-progress"])
    assert "computed (" in capsys.readouterr().out  # rebuilt without --force, saying why
    from genderfusion.extract.cache import format as fc

    assert fc.load(cache).train.features.shape[0] == 60


# ---- silent wrong results ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-5", "0"])
def test_03_predict_batch_size_must_be_positive(pipe, capsys, value, tmp_path):
    data, ws, sub = pipe
    out = tmp_path / "p.csv"
    line = fails(predict_main, ["--model", "fusion", "--workdir", str(ws), "--images", str(data / "test"),
                                "--batch-size", value, "--out", str(out)], capsys)
    assert f"argument --batch-size: '{value}' is not a positive integer" in line
    assert not out.exists()


def test_04_a_label_changed_after_train_head_stops_predict(pipe, capsys):
    data, ws, sub = pipe
    lines = (data / "train.csv").read_text().splitlines()
    i, y = lines[3].split(",")
    (data / "train.csv").write_text("\n".join([*lines[:3], f"{i},{1 - int(y)}", *lines[4:]]) + "\n")
    before = sha(sub)
    line = fails(predict_main, ["--model", "fusion", "--workdir", str(ws), "--data", str(data), "--out", str(sub)],
                 capsys)
    assert f"1 training row(s) of {data / 'train.csv'} changed since model fusion was trained (e.g. id {i}: label " \
           f"then {y}, now {1 - int(y)})" in line and "No submission written" in line
    assert sha(sub) == before


def test_05_a_test_image_replaced_with_its_size_and_mtime_kept_is_seen(pipe):
    data, ws, sub = pipe
    target, other = data / "test/200003.jpg", data / "test/200004.jpg"
    times, size = (target.stat().st_atime_ns, target.stat().st_mtime_ns), target.stat().st_size
    raw = other.read_bytes()
    target.write_bytes(raw[:size] + b"\0" * (size - len(raw)))  # another face, padded or cut to the same size
    os.utime(target, ns=times)
    assert target.stat().st_size == size and target.stat().st_mtime_ns == times[1]
    before = sha(sub)
    with pytest.raises(DataError, match=r"not the ones cnn-small's features were computed from \(file size or "
                                        r"content differs\), e.g. ids \['200003'\]"):
        predict_submission("fusion", data, sub, ws)
    assert sha(sub) == before
    out = extract_features(data, "cnn-small", ws, progress=False, **FROZEN)
    assert out.status == "appended" and out.computed_rows == 1


def _model(pipe):
    from genderfusion.fusion.model.classifier import FusionClassifier

    return FusionClassifier.load("fusion", pipe[1])


def test_06_predict_images_follows_symbolic_links_and_names_broken_ones(pipe, tmp_path, capsys):
    data, ws, _ = pipe
    photos = tmp_path / "photos"
    (photos / "real").mkdir(parents=True)
    shutil.copy(data / "test/200000.jpg", photos / "real/a.jpg")
    os.symlink(data / "test", photos / "linked_folder")  # 12 images through a linked folder
    os.symlink(data / "test/200001.jpg", photos / "linked_file.jpg")
    os.symlink(photos / "real", photos / "real/loop")  # a cycle ends
    out = tmp_path / "p.csv"
    predict_main(["--model", "fusion", "--workdir", str(ws), "--images", str(photos), "--out", str(out),
                  "--no-progress", "--faces", "whole"])
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 1 + 12 + 1
    os.symlink(tmp_path / "gone.jpg", photos / "broken.jpg")
    line = fails(predict_main, ["--model", "fusion", "--workdir", str(ws), "--images", str(photos), "--out",
                                str(tmp_path / "q.csv"), "--no-progress", "--faces", "whole", "--strict"], capsys)
    assert f"{photos / 'broken.jpg'} not found (a broken symbolic link)" in line and not (tmp_path / "q.csv").exists()
    for extra in ([], ["--skip-bad"]):  # by default (--skip-bad: the same) every row is written, and the exit says 3
        out.unlink()
        line = fails(predict_main, ["--model", "fusion", "--workdir", str(ws), "--images", str(photos), "--out",
                                    str(out), "--no-progress", "--faces", "whole", *extra], capsys, code=3)
        assert "1 of 15 input(s) could not be read" in line
        rows = out.read_text().splitlines()[1:]
        broken = [r for r in rows if r.startswith(str(photos / "broken.jpg"))]
        assert len(rows) == 15 and len(broken) == 1 and "broken symbolic link" in broken[0]


def test_07_one_rule_for_alpha(pipe):
    from genderfusion.fusion.photos.decode import decode_one

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    expected = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0))  # composited on black, by a numpy formula
    from_pil, from_array = decode_one(Image.fromarray(rgba, "RGBA"), 0), decode_one(rgba, 0)
    assert np.abs(from_pil.astype(float) - expected).max() <= 1
    assert (from_pil == from_array).all()
    clf = _model(pipe)
    assert np.array_equal(clf.predict_proba([Image.fromarray(rgba, "RGBA")]), clf.predict_proba([rgba]))


@pytest.mark.parametrize("case", ["zero-size array", "all-NaN tensor", "one NaN tensor"])
def test_08_empty_and_nan_images_are_errors_naming_the_image(pipe, case):
    import torch

    clf = _model(pipe)
    good = np.zeros((32, 32, 3), dtype=np.uint8)
    bad = {"zero-size array": np.zeros((0, 5, 3), dtype=np.uint8),
           "all-NaN tensor": torch.full((3, 8, 8), float("nan")),
           "one NaN tensor": torch.rand(3, 8, 8).index_put_((torch.tensor(0), torch.tensor(1), torch.tensor(2)),
                                                             torch.tensor(float("nan")))}[case]
    with pytest.raises(ValueError, match=r"image 1: (an empty array|the tensor holds \d+ NaN)"):
        clf.predict_proba([good, bad])


def test_09_train_head_refuses_a_foreign_cache_when_the_data_folder_is_gone(pipe, tmp_path):
    from genderfusion.extract.data.synthetic import make_synthetic

    data, ws, _ = pipe
    other = make_synthetic(tmp_path / "other", n_train=60, n_test=12, size=32, seed=9)  # same ids, other faces
    extract_features(other, "cnn-small", tmp_path / "ws2", progress=False, **FROZEN)
    cache = ws / "features/cnn-small-frozen.h5"
    shutil.copy(tmp_path / "ws2/features/cnn-small-frozen.h5", cache)
    shutil.rmtree(data)
    with pytest.raises(WorkspaceError, match=r"cnn-small-frozen's cache holds other training rows \(ids, labels or "
                                             r"image sizes; .*\) than workspace .* was made for"):
        train_head(ws, HeadTraining(["cnn-small-frozen"], ["logistic"], protocols=("global",), name="new"), log=quiet)
    assert not (ws / "heads/new").exists()


def test_10_audit_labels_refuses_another_data_folder(pipe, tmp_path):
    from genderfusion.fusion.audit.labels import audit_labels

    data, ws, _ = pipe
    other = Path(shutil.copytree(data, tmp_path / "other"))
    lines = (other / "train.csv").read_text().splitlines()
    i, y = lines[1].split(",")
    (other / "train.csv").write_text("\n".join([lines[0], f"{i},{1 - int(y)}", *lines[2:]]) + "\n")
    with pytest.raises(WorkspaceError, match=r"data folder .*other: its training ids, labels or image sizes are not the "
                                             r"ones workspace .* was made for"):
        audit_labels(ws, other, "fusion", log=quiet)
    assert not (ws / "audit").exists()


# ---- lost or half-written ---------------------------------------------------------------------------------------
def test_11_train_head_failing_at_the_card_leaves_the_old_folder_whole(pipe, monkeypatch):
    import genderfusion.fusion.training.train_head as th

    data, ws, _ = pipe
    out = ws / "heads/fusion"
    before = {p.name: sha(p) for p in out.iterdir() if p.is_file()}

    def broken_card(*a, **kw):
        raise RuntimeError("the card failed")

    monkeypatch.setattr(th, "write_card", broken_card)
    with pytest.raises(RuntimeError, match="the card failed"):
        train_head(ws, HeadTraining(SOURCES, ["logistic", "knn"], protocols=("global",), refit=True), log=quiet)
    assert {p.name: sha(p) for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in (ws / "heads").iterdir()] == ["fusion"]  # no temporary folder left


def test_12_wilson_interval_holds_its_estimate_and_the_card_renders_on_small_sets(pipe):
    from genderfusion.fusion.training.card import wilson, write_card

    for n in range(1, 80):
        for k in range(n + 1):
            lo, hi = wilson(k, n)
            assert 0 <= lo <= k / n <= hi <= 1, (k, n, lo, hi)
    z, p, n = 1.96, 0.75, 40  # against the textbook formula away from the bounds
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert np.allclose(wilson(30, 40), (c - h, c + h))
    data, ws, _ = pipe  # 60 rows: age groups of a few faces each, some all right
    assert "<h1>Model card: fusion</h1>" in write_card(ws / "heads/fusion", ws).read_text()


def test_13_a_killed_writer_leaves_no_temporaries_behind(pipe, tmp_path):
    from genderfusion.files.atomic import write_text

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)  # a pid whose process has ended
    out = tmp_path / "out.csv"
    stale = [tmp_path / f".out.csv.{dead}.abc123.tmp", tmp_path / f".out.csv.{dead}.def456.tmp"]
    stale[0].write_text("half a prediction")
    stale[1].mkdir()
    mine = tmp_path / f".out.csv.{os.getpid()}.live.tmp"  # a live writer's file is kept
    mine.write_text("in progress")
    write_text(out, "id,label\n")
    assert not any(p.exists() for p in stale) and mine.exists() and out.read_text() == "id,label\n"


def test_13b_sigkill_of_predict_then_a_rerun_cleans_up(pipe, tmp_path):
    """A real predict process killed while writing: its hidden temporary file is removed by the next run."""
    import signal
    import time

    data, ws, _ = pipe
    out = tmp_path / "p.csv"
    code = ("import sys, time; import genderfusion.fusion.predict.table as ph; w = ph._Writer.write\n"
            "def slow(self, rows):\n    w(self, rows); sys.stdout.write('wrote\\n'); sys.stdout.flush(); time.sleep(60)\n"
            "ph._Writer.write = slow\nfrom genderfusion.cli.predict_command import predict_main\n"
            f"predict_main(['--model', 'fusion', '--workdir', {str(ws)!r}, '--images', {str(data / 'test')!r}, "
            f"'--out', {str(out)!r}, '--batch-size', '4', '--no-progress', '--faces', 'whole'])")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "wrote"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.glob(".p.csv.*.tmp"))
    assert len(left) == 1 and not out.exists()
    time.sleep(0.1)
    predict_main(["--model", "fusion", "--workdir", str(ws), "--images", str(data / "test"), "--out", str(out),
                  "--no-progress", "--faces", "whole"])
    assert not list(tmp_path.glob(".p.csv.*.tmp")) and len(out.read_text().splitlines()) == 13


def test_14_a_failed_extract_keeps_workspace_json_and_leaves_no_parts(pipe, tmp_path, capsys):
    from genderfusion.cli.extract_commands import extract_main

    data, ws, _ = pipe
    broken = Path(shutil.copytree(data, tmp_path / "broken"))
    (broken / "test/200002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    info = sha(ws / "workspace.json")
    line = fails(extract_main, ["--backbone", "cnn-small", "--frozen", "--img-size", "32", "--pool", "max",
                                "--weights", "random", "--data", str(broken), "--workdir", str(ws),
                                "--no-progress"], capsys)
    assert "200002.jpg: cannot decode image" in line
    assert sha(ws / "workspace.json") == info
    assert not list((ws / "features").glob("*.parts"))


# ---- other ------------------------------------------------------------------------------------------------------
def test_15_test_csv_missing_is_named_and_a_header_only_one_works(synth, tmp_path):
    (synth / "test.csv").unlink()
    with pytest.raises(DataError, match=r"test.csv: not found; a competition folder has train.csv and test.csv"):
        extract_features(synth, "cnn-small", tmp_path / "ws", progress=False, **FROZEN)
    (synth / "test.csv").write_text("id\n")
    out = extract_features(synth, "cnn-small", tmp_path / "ws", progress=False, **FROZEN)
    from genderfusion.extract.cache import format as fc

    fs = fc.load(out.path)
    assert fs.train.features.shape[0] == 60 and fs.test.features.shape == (1, 0, fs.train.features.shape[1])


@pytest.mark.parametrize("what", ["empty list", "empty folder", "utf-16 list"])
def test_16_17_empty_lists_and_folders_agree_and_bad_lists_are_named(pipe, tmp_path, capsys, what):
    data, ws, _ = pipe
    target = tmp_path / ("photos" if what == "empty folder" else "list.txt")
    if what == "empty folder":
        target.mkdir()
    elif what == "empty list":
        target.write_text("\n  \n")
    else:
        target.write_bytes(str(data / "test/200000.jpg").encode("utf-16"))
    line = fails(predict_main, ["--model", "fusion", "--workdir", str(ws), "--images", str(target), "--out",
                                str(tmp_path / "p.csv")], capsys)
    assert line.startswith(f"error: {target}: ")
    assert not (tmp_path / "p.csv").exists()


def test_18_predict_frame_with_skip_bad_writes_error_rows(pipe, tmp_path):
    import io

    data, _, _ = pipe
    clf = _model(pipe)
    frame = clf.predict_frame([data / "test/200000.jpg", 42], skip_bad=True)
    assert frame["label"].isna()[1] and "image 1: unsupported type int" in frame["error"][1]
    raw = (data / "test/200001.jpg").read_bytes()
    lazy = Image.open(io.BytesIO(raw[:len(raw) // 2]))  # opened lazily: decoding fails only when used
    frame = clf.predict_frame([data / "test/200000.jpg", lazy], skip_bad=True)
    assert frame["label"].isna()[1] and frame["error"][1].startswith("<image 1>: cannot decode image")
    from genderfusion.extract.errors import BadImageError

    with pytest.raises(BadImageError, match=r"<image 1>: cannot decode image"):
        clf.predict_proba([data / "test/200000.jpg", Image.open(io.BytesIO(raw[:len(raw) // 2]))])


def test_19_predict_model_path_honours_workdir(pipe, tmp_path):
    data, ws, sub = pipe
    from genderfusion.fusion.model.classifier import FusionClassifier

    model = FusionClassifier.load(ws / "heads/fusion/model.safetensors", workdir=ws).save(tmp_path / "x.safetensors")  # saved in ws
    moved = ws.rename(tmp_path / "moved")  # the model's own workspace is gone; --workdir names the new place
    out = tmp_path / "s.csv"
    predict_main(["--model", str(model), "--workdir", str(moved), "--data", str(data), "--out", str(out)])
    assert out.read_text() == sub.read_text()
    photos = tmp_path / "p.csv"  # from the images: the fold checkpoints are read from --workdir too
    predict_main(["--model", str(model), "--workdir", str(moved), "--images", str(data / "test"), "--out",
                  str(photos), "--no-progress", "--faces", "whole"])
    import csv

    labels = {Path(r["path"]).stem: r["label"] for r in csv.DictReader(open(photos))}
    assert labels == dict(r.split(",") for r in sub.read_text().splitlines()[1:])


@pytest.mark.parametrize("arg,value", [("--threshold", "-5"), ("--top", "-3")])
def test_20_audit_labels_rejects_negative_arguments(pipe, capsys, arg, value):
    from genderfusion.cli.model_commands import audit_labels_main

    data, ws, _ = pipe
    line = fails(audit_labels_main, ["--workdir", str(ws), arg, value], capsys)
    assert f"argument {arg}: '{value}' is not" in line
    assert not (ws / "audit").exists()


def test_21_python_m_genderfusion_version():
    from genderfusion import __version__

    proc = subprocess.run([sys.executable, "-m", "genderfusion", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"genderfusion {__version__}"


@pytest.mark.parametrize("value", ["abc", "3/2", "1"])
def test_22_extract_shard_must_be_i_of_n(pipe, capsys, value):
    from genderfusion.cli.extract_commands import extract_main

    data, ws, _ = pipe
    line = fails(extract_main, ["--backbone", "cnn-small", "--data", str(data), "--workdir", str(ws), "--shard",
                                value], capsys)
    assert f"argument --shard: '{value}': expected I/N" in line


def test_23_ctrl_c_in_predict_says_what_it_keeps(pipe, capsys, monkeypatch):
    import genderfusion.fusion.predict.table as table

    data, ws, _ = pipe

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(table, "predict_images", interrupted)
    line = fails(predict_main, ["--model", "fusion", "--workdir", str(ws), "--images", str(data / "test")], capsys,
                 code=130)
    assert line == "interrupted; no output file was written (nothing else changed)"


def test_24_16_bit_images_are_scaled_by_257(tmp_path):
    from genderfusion.extract.data.images import load_rgb

    v8 = np.random.default_rng(0).integers(0, 256, (20, 24), dtype=np.uint8)
    path8, path16 = tmp_path / "a8.png", tmp_path / "a16.png"
    Image.fromarray(v8, "L").save(path8)
    Image.fromarray((v8.astype(np.uint16) * 257)).save(path16)  # the same picture at 16 bits
    assert (load_rgb(path16) == load_rgb(path8)).all()
    dark = (v8.astype(np.uint16) // 4) * 257  # a dark 16-bit picture stays dark (no per-image stretch)
    Image.fromarray(dark).save(path16)
    assert abs(load_rgb(path16).mean() - (v8 // 4).mean()) < 0.5


def test_25_readme_lists_the_prediction_columns():
    from genderfusion.fusion.predict.rows import COLUMNS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"`{','.join(COLUMNS)}`" in readme
    assert "`path,p_female,label,doubtful,error`" not in readme


# ---- round three: the cases as data (tests/bad_inputs.json), one row a case -----------------------------------------
TABLE = json.loads((Path(__file__).parent / "bad_inputs.json").read_text())["cases"]
ROOT = Path(__file__).resolve().parents[1]


def _main(name: str):
    from genderfusion.__main__ import main as genderfusion
    from genderfusion.cli import extract_commands as e
    from genderfusion.cli import model_commands as f
    from genderfusion.cli.predict_command import predict_main

    return {"train-head": f.train_head_main, "predict": predict_main, "export-model": f.export_model_main,
            "audit-labels": f.audit_labels_main, "extract": e.extract_main, "train-backbone": e.train_backbone_main,
            "make-synthetic": e.make_synthetic_main, "genderfusion": genderfusion}[name]


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height pixels (its header alone: a reader must refuse it before decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _setup(name: str, at: dict) -> None:
    tmp, ws, photo = at["tmp"], at["ws"], at["photo"]
    if name == "list_csv":
        (tmp / "list.txt").write_text(f"{photo}\n")
        (tmp / "x.csv").write_text("a table someone keeps\n")
    elif name == "model_copy":
        (tmp / "copy").mkdir()
        shutil.copy(ws / "heads/fusion/model.safetensors", tmp / "copy/model.safetensors")
    elif name == "broken_workspace_json":
        (ws / "workspace.json").write_text('{"dataset_fingerprint": ')
    elif name == "non_utf8_name":
        (tmp / "photos").mkdir()
        shutil.copy(photo, os.path.join(os.fsencode(tmp / "photos"), b"caf\xe9.jpg"))
    elif name == "foreign_folder":  # a competition folder make-synthetic did not write
        (at["data"] / ".make-synthetic").unlink()
    elif name == "huge_png":
        _png_header(tmp / "huge.png", 20000, 10000)
    else:
        raise KeyError(f"no setup {name!r}")


def _digests(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else ".": sha(p) for p in files}


@pytest.mark.parametrize("case", TABLE, ids=[c["id"] for c in TABLE])
def test_table(case, pipe, tmp_path, capsys, caplog):
    data, ws, sub = pipe
    at = {"data": data, "ws": ws, "sub": sub, "tmp": tmp_path / "t", "photo": sorted((data / "test").glob("*.jpg"))[0]}
    at["tmp"].mkdir()
    if case.get("setup"):
        _setup(case["setup"], at)
    fill = lambda text: Path(text.format(**at))  # noqa: E731
    before = {p: _digests(fill(p)) for p in case.get("unchanged", [])}
    argv = [a.format(**at) for a in case["run"]]
    capsys.readouterr()
    if argv[0] == "bench/run.py" or case.get("process"):  # a process of its own: its real stderr
        cmd = [str(ROOT / argv[0])] if argv[0] == "bench/run.py" else ["-m", "genderfusion", argv[0]]
        proc = subprocess.run([sys.executable, *cmd, *argv[1:]], capture_output=True, text=True)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        try:
            _main(argv[0])(argv[1:])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        err += caplog.text  # log records (pytest holds the logging handlers)
    assert code == case["exit"], (out, err)
    assert "Traceback" not in err
    if code:
        lines = [line for line in err.splitlines() if not line.startswith(("usage:", "  ", "INFO", "WARNING"))]
        assert len(lines) == 1 and re.search(case["says"], lines[0]), err
    else:
        assert re.search(case["says"], out + err), (out, err)
    if "not_says" in case:
        assert not re.search(case["not_says"], out + err), err
    for p, digests in before.items():
        assert _digests(fill(p)) == digests, f"{p} changed"
    for p in case.get("absent", []):
        assert not fill(p).exists(), p
    if "output_has" in case:
        path, text = case["output_has"]
        assert text in fill(path).read_text(encoding="utf-8")


def test_3_32_a_training_image_replaced_by_one_of_the_same_size_retrains_its_fold_models(pipe, capsys, caplog):
    """Fold models record the training images' contents: a replaced image (same size, modification time restored)
    makes extract refuse them by name and train-backbone train them again."""
    from genderfusion.cli.extract_commands import extract_main

    data, ws, _ = pipe
    sizes = {p: p.stat().st_size for p in (data / "train").glob("*.jpg")}
    small, big = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    times = (big.stat().st_atime_ns, big.stat().st_mtime_ns)
    big.write_bytes(small.read_bytes() + b"\0" * (sizes[big] - sizes[small]))
    os.utime(big, ns=times)
    models = {p.name: sha(p) for p in (ws / "models/cnn-small").glob("fold*.pt")}
    line = fails(extract_main, ["--backbone", "cnn-small", "--data", str(data), "--workdir", str(ws),
                                "--no-progress"], capsys)
    assert "cnn-small: fold model(s) [0, 1] were trained on other training labels or images" in line
    assert {p.name: sha(p) for p in (ws / "models/cnn-small").glob("fold*.pt")} == models
    caplog.set_level("WARNING")
    train_backbone(data, TrainConfig("cnn-small", img_size=32, epochs=1, batch_size=16), ws, k=2, progress=False)
    assert caplog.text.count("training images changed since it was trained") == 2
    assert extract_features(data, "cnn-small", ws, progress=False).status != "hit"


def test_3_33_the_python_api_takes_bytes_as_one_image_and_names_what_it_accepts(pipe):
    from genderfusion.fusion.model.classifier import FusionClassifier

    data, ws, _ = pipe
    clf = FusionClassifier.load(ws / "heads/fusion", workdir=ws)
    photo = sorted((data / "test").glob("*.jpg"))[0]
    assert np.array_equal(clf.predict_proba(photo.read_bytes()), clf.predict_proba(str(photo)))
    assert clf.predict_frame(bytearray(photo.read_bytes()), faces="whole")["path"].tolist() == ["<image 0>"]
    with pytest.raises(TypeError, match="images: None; give a path, the bytes of an image file, a PIL image"):
        clf.predict(None)
    with pytest.raises(TypeError, match="images: a int; give a path"):
        clf.predict(7)
    with pytest.raises(ValueError, match="batch_size 0: a positive integer"):
        clf.predict_proba([str(photo)], batch_size=0)
    with pytest.raises(BadImageError, match="<image 0>: cannot decode image"):
        clf.predict(b"not an image")


def test_3_34_large_photos_are_reduced_as_they_are_decoded(tmp_path):
    """Eight 6000 x 4000 JPEGs in one batch: memory holds each at the working size (1024 px), not 72 MB a photo."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)).resize((6000, 4000))
    for i in range(8):
        base.save(tmp_path / f"big{i}.jpg", quality=80)
    code = ("import resource, sys, numpy as np; from genderfusion.fusion.photos.decode import decode_inputs, MAX_SIDE; "
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "a = decode_inputs(sys.argv[1:], MAX_SIDE); "
            "print(max(x.shape[1] for x in a), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, *map(str, sorted(tmp_path.glob("big*.jpg")))],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    side, grown_mb = map(int, out.stdout.split())
    assert side == 1024 and grown_mb < 120, (side, grown_mb)  # full-size decodes: 8 x 72 MB
