"""Bad input end to end (the reliability issue's suite, begun): each case stops with one line naming the file or
id, or works correctly; nothing computed before is lost (sha256 before and after)."""
import hashlib
import shutil

import pytest

from genderfusion.extract.cache.api import extract_features
from genderfusion.extract.errors import DataError
from genderfusion.extract.models.training import TrainConfig, train_backbone
from genderfusion.fusion.predict.submission import predict_submission
from genderfusion.fusion.training.train_head import HeadTraining, train_head

CFG = TrainConfig("cnn-small", img_size=32, epochs=1, batch_size=16)
FROZEN = dict(frozen=True, img_size=32, pool="avg", weights="random")


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pipeline(synth, tmp_path):
    """A workspace with cnn-small (2 folds), a frozen source, a trained head and a submission."""
    ws = tmp_path / "ws"
    train_backbone(synth, CFG, ws, k=2, progress=False)
    extract_features(synth, "cnn-small", ws, progress=False)
    extract_features(synth, "cnn-small", ws, progress=False, **FROZEN)
    train_head(ws, HeadTraining(["cnn-small", "cnn-small-frozen"], ["logistic"], protocols=("global",)),
               log=lambda m: None)
    predict_submission("fusion", synth, tmp_path / "sub.csv", ws)
    return synth, ws, tmp_path / "sub.csv"


def test_predict_refuses_test_images_other_than_the_cached_ones(pipeline):
    data, ws, sub = pipeline
    before = sha(sub)
    shutil.copy(data / "train/100000.jpg", data / "test/200003.jpg")  # another face under a cached test id
    with pytest.raises(DataError, match=r"test image\(s\) in .* are not the ones cnn-small's features were computed "
                                        r"from .*\['200003'\].*No submission written"):
        predict_submission("fusion", data, sub, ws)
    assert sha(sub) == before


def test_skip_bad_works_end_to_end(synth, tmp_path):
    """One corrupt training image and one corrupt test image: extraction skips them, the heads leave the training
    row out, and the test row gets the sample submission's label, flagged with the reason, not a blank guess."""
    (synth / "train/100007.jpg").write_bytes(b"\xff\xd8 truncated")
    (synth / "test/200005.jpg").write_bytes(b"")
    ws = tmp_path / "ws"
    with pytest.raises(DataError, match=r"100007.jpg.*skip_bad=True"):
        train_backbone(synth, CFG, ws, k=2, progress=False)
    train_backbone(synth, CFG, ws, k=2, skip_bad=True, progress=False)
    extract_features(synth, "cnn-small", ws, skip_bad=True, progress=False)
    extract_features(synth, "cnn-small", ws, skip_bad=True, progress=False, **FROZEN)
    report = train_head(ws, HeadTraining(["cnn-small", "cnn-small-frozen"], ["logistic"], protocols=("global",)),
                        log=lambda m: None)
    assert sum(map(sum, report["confusion"])) == 59  # 60 rows, the corrupt one left out
    out = predict_submission("fusion", synth, tmp_path / "sub.csv", ws)
    rows = dict(line.split(",") for line in (tmp_path / "sub.csv").read_text().splitlines()[1:])
    assert len(rows) == 12 and rows["200005"] == "0" and out["skipped"] == 1  # sampleSubmit.csv says 0
    details = {line.split(",")[0]: line for line in (tmp_path / "sub_details.csv").read_text().splitlines()}
    assert details["200005"] == "200005,0,,1,0,corrupt image skipped at extraction; label from the sample submission"
    assert details["200004"].endswith(",")  # predicted rows carry no reason


def test_a_corrected_label_is_never_trained_on_silently(pipeline):
    data, ws, sub = pipeline
    model = ws / "heads/fusion/model.safetensors"
    before = sha(model)
    lines = (data / "train.csv").read_text().splitlines()
    i, y = lines[4].split(",")
    (data / "train.csv").write_text("\n".join([*lines[:4], f"{i},{1 - int(y)}", *lines[5:]]) + "\n")
    with pytest.raises(DataError, match=f"1 label.* differ from cnn-small's cached ones .*id {i}: cached {y}"):
        train_head(ws, HeadTraining(["cnn-small", "cnn-small-frozen"], ["logistic"], protocols=("global",)),
                   log=lambda m: None)
    assert sha(model) == before
    out = extract_features(data, "cnn-small", ws, progress=False, **FROZEN)  # frozen: only that row again
    assert out.status == "appended" and out.computed_rows == 1
    from genderfusion.extract.errors import WorkspaceError

    with pytest.raises(WorkspaceError, match=r"cnn-small: fold model\(s\) \[0, 1\] were trained on other training "
                                             r"labels or images.*fine-tune cnn-small again \(train-backbone"):
        extract_features(data, "cnn-small", ws, progress=False)
    train_backbone(data, CFG, ws, k=2, progress=False)
    assert extract_features(data, "cnn-small", ws, progress=False).status == "computed"  # new checkpoints
    report = train_head(ws, HeadTraining(["cnn-small", "cnn-small-frozen"], ["logistic"], protocols=("global",)),
                        log=lambda m: None)
    assert sum(map(sum, report["confusion"])) == 60


def test_a_cache_of_another_dataset_is_refused(pipeline, tmp_path):
    from genderfusion.extract.data.synthetic import make_synthetic

    data, ws, sub = pipeline
    other = make_synthetic(tmp_path / "other", n_train=40, n_test=6, size=32, seed=4)
    extract_features(other, "cnn-small", tmp_path / "ws2", progress=False, **FROZEN)
    shutil.copy(tmp_path / "ws2/features/cnn-small-frozen.h5", ws / "features/cnn-small-frozen.h5")
    with pytest.raises(DataError, match=r"cnn-small-frozen: its cache holds 40 training rows, .*train.csv 60"):
        train_head(ws, HeadTraining(["cnn-small-frozen"], ["logistic"], protocols=("global",)), log=lambda m: None)


@pytest.mark.parametrize("case,error,match", [
    ("utf16", DataError, r"train.csv: not UTF-8 text"),
    ("resnet19", None, r"unknown backbone 'resnet19'; known: .*resnet18"),
    ("cuda", ValueError, r"device cuda: no CUDA device is available here; use auto or cpu"),
])
def test_one_line_errors(synth, tmp_path, case, error, match):
    import torch

    from genderfusion.extract.errors import UnknownBackboneError

    if case == "utf16":
        text = (synth / "train.csv").read_text()
        (synth / "train.csv").write_bytes(text.encode("utf-16"))
        call = lambda: extract_features(synth, "cnn-small", tmp_path / "ws", progress=False)  # noqa: E731
    elif case == "resnet19":
        error = UnknownBackboneError
        call = lambda: extract_features(synth, "resnet19", tmp_path / "ws", progress=False)  # noqa: E731
    else:
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        call = lambda: extract_features(synth, "cnn-small", tmp_path / "ws", device="cuda",  # noqa: E731
                                        progress=False, **FROZEN)
    with pytest.raises(error, match=match):
        call()


def test_exif_orientation_and_float_range(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from genderfusion.extract.data.images import load_rgb
    from genderfusion.fusion.photos.decode import decode_inputs

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # white on the left
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = load_rgb(tmp_path / "phone.jpg")
    assert out.shape == (40, 20, 3) and out[:10].mean() > 200 and out[-10:].mean() < 50  # white on top
    with pytest.raises(ValueError, match=r"image 0: a float tensor must hold values in \[0, 1\], found 0..255"):
        decode_inputs([torch.full((3, 8, 8), 255.0).index_fill_(1, torch.tensor([0]), 0.0)])


def test_a_corrupt_image_in_the_parallel_decode_is_named(synth, tmp_path):
    """More than 64 images over 2 worker processes: the error raised in a worker names the file."""
    from genderfusion.extract.data.images import decode_many
    from genderfusion.extract.errors import BadImageError

    paths = []
    for n in range(90):
        p = tmp_path / f"{n}.jpg"
        shutil.copy(synth / "train" / f"{100000 + n % 60}.jpg", p)
        paths.append(p)
    paths[77].write_bytes(paths[77].read_bytes()[:100])
    with pytest.raises(BadImageError, match=r"77.jpg: cannot decode image .*skip_bad=True"):
        decode_many(paths, 16, workers=2, progress=False)
    arr, bad = decode_many(paths, 16, workers=2, skip_bad=True, progress=False)
    assert bad == [77] and arr[77].max() == 0 and arr[76].max() > 0


def test_two_extract_runs_at_once_the_second_is_refused(synth, tmp_path):
    """A second writer of the same cache stops with one line; the first one's work is untouched."""
    import fcntl

    from genderfusion.extract.errors import WorkspaceError

    ws = tmp_path / "ws"
    out = extract_features(synth, "cnn-small", ws, progress=False, **FROZEN)
    before = sha(out.path)
    lock = out.path.with_name(out.path.name + ".lock")
    with open(lock, "a+") as fh:  # as a running extract holds it
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(WorkspaceError, match=r"cnn-small-frozen.h5 is being written by another process"):
            extract_features(synth, "cnn-small", ws, force=True, progress=False, **FROZEN)
    assert sha(out.path) == before
    assert extract_features(synth, "cnn-small", ws, force=True, progress=False, **FROZEN).status == "computed"


def test_sigkill_then_rerun_resumes_to_the_uninterrupted_result(synth, tmp_path):
    import signal
    import subprocess
    import sys

    import numpy as np

    from genderfusion.extract.cache import format as fc

    ws = tmp_path / "ws"
    script = f"""
import time
import genderfusion.extract.cache.writer as w
from genderfusion.extract.sources.torch_source import TorchSource
from genderfusion.extract.cache.api import extract_features
w.PART_ROWS = 8
real, write = TorchSource.forward, w._write_rows
TorchSource.forward = lambda self, b, s: (time.sleep(0.2), real(self, b, s))[1]
w._write_rows = lambda *a: (write(*a), print("part", flush=True))[0]  # the part is flushed before the next one
extract_features({str(synth)!r}, "cnn-small", {str(ws)!r}, progress=False, frozen=True, img_size=32, pool="avg",
                 weights="random", dtype="float32")
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # two parts written and flushed, the third computed
        assert proc.stdout.readline().strip() == "part"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list((ws / "features/cnn-small-frozen.h5.parts").glob("*.npz"))) >= 2
    assert not (ws / "features/cnn-small-frozen.h5").exists()
    import genderfusion.extract.cache.writer as w

    old, w.PART_ROWS = w.PART_ROWS, 8
    try:
        out = extract_features(synth, "cnn-small", ws, progress=False, dtype="float32", **FROZEN)
    finally:
        w.PART_ROWS = old
    assert out.status == "computed" and out.computed_rows < 72  # resumed: the parts written before are kept
    straight = extract_features(synth, "cnn-small", tmp_path / "ws2", progress=False, dtype="float32", **FROZEN)
    a, b = fc.load(out.path), fc.load(straight.path)
    assert np.allclose(a.train.features, b.train.features, atol=1e-6)
    assert np.allclose(a.test.features, b.test.features, atol=1e-6)


def test_an_image_replaced_by_one_of_the_same_byte_size_is_seen(pipeline):
    """The cache keys an image by (size, content digest): other pixels under the same size and modification time
    are recomputed."""
    import os

    import numpy as np

    from genderfusion.extract.cache import format as fc

    data, ws, sub = pipeline
    sizes = {p: p.stat().st_size for p in (data / "test").glob("*.jpg")}
    small, big = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    before = fc.load(ws / "features/cnn-small-frozen.h5")
    raw, times = small.read_bytes(), (big.stat().st_atime_ns, big.stat().st_mtime_ns)
    big.write_bytes(raw + b"\0" * (sizes[big] - len(raw)))  # a JPEG decoder ignores what follows its end marker
    os.utime(big, ns=times)  # its modification time restored
    assert big.stat().st_size == sizes[big] and big.stat().st_mtime_ns == times[1]
    with pytest.raises(DataError, match=f"file size or content differs.*'{big.stem}'"):
        predict_submission("fusion", data, sub, ws)
    out = extract_features(data, "cnn-small", ws, progress=False, dtype="float16", **FROZEN)
    assert out.status == "appended" and out.computed_rows == 1
    after = fc.load(out.path)
    row, twin = list(after.test.ids).index(big.stem), list(after.test.ids).index(small.stem)
    assert np.allclose(after.test.features[0, row], after.test.features[0, twin], atol=1e-3)  # the new pixels
    assert not np.allclose(before.test.features[0, row], after.test.features[0, row], atol=1e-3)


def _grow(synth, n: int = 70):
    """The synthetic folder with n training images (> 64: the 2-worker decode path)."""
    for j in range(60, n):
        shutil.copy(synth / "train" / f"{100000 + j % 60}.jpg", synth / "train" / f"{100000 + j}.jpg")
    (synth / "train.csv").write_text("id,label\n" + "".join(f"{100000 + j},{j % 2}\n" for j in range(n)))
    return synth


def _save_as_jpg_name(path, mode: str, size: tuple[int, int], fmt: str):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    im.save(path, format=fmt)


BROKEN = {  # case -> (how to break the folder, exit code, what the one line says)
    "truncated jpeg": (lambda d: (d / "train/100065.jpg").write_bytes((d / "train/100065.jpg").read_bytes()[:300]),
                       2, r"100065.jpg: cannot decode image .*--skip-bad"),
    "zero-byte image": (lambda d: (d / "test/200002.jpg").write_bytes(b""), 2, r"200002.jpg: cannot decode image"),
    "png named .jpg": (lambda d: _save_as_jpg_name(d / "train/100003.jpg", "RGB", (40, 30), "PNG"), 0, None),
    "cmyk jpeg": (lambda d: _save_as_jpg_name(d / "train/100004.jpg", "CMYK", (40, 30), "JPEG"), 0, None),
    "16-bit png": (lambda d: _save_as_jpg_name(d / "train/100005.jpg", "I;16", (40, 30), "PNG"), 0, None),
    "rgba png": (lambda d: _save_as_jpg_name(d / "train/100006.jpg", "RGBA", (40, 30), "PNG"), 0, None),
    "1x1 image": (lambda d: _save_as_jpg_name(d / "train/100008.jpg", "RGB", (1, 1), "JPEG"), 0, None),
    "6000x6000 image": (lambda d: _save_as_jpg_name(d / "test/200001.jpg", "RGB", (6000, 6000), "JPEG"), 0, None),
    "wrong header": (lambda d: (d / "train.csv").write_text((d / "train.csv").read_text().replace("id,label", "ID,gender")),
                     2, r"train.csv: missing column\(s\) \['id', 'label'\]"),
    "bad label": (lambda d: (d / "train.csv").write_text((d / "train.csv").read_text().replace("100002,0", "100002,f")),
                  2, r"train.csv: labels must be 0 \(male\) or 1 \(female\); bad \(id, label\): \('100002', 'f'\)"),
    "duplicate id": (lambda d: (d / "train.csv").write_text((d / "train.csv").read_text() + "100001,1\n"),
                     2, r"train.csv: duplicate id\(s\) 100001"),
    "id in train and test": (lambda d: (d / "test.csv").write_text((d / "test.csv").read_text() + "100001\n"),
                             2, r"test.csv: id\(s\) also in .*train.csv: 100001"),
    "bom and crlf csv": (lambda d: (d / "train.csv").write_bytes(
        b"\xef\xbb\xbf" + (d / "train.csv").read_bytes().replace(b"\n", b"\r\n")), 0, None),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_gives_one_line_and_keeps_earlier_outputs(synth, tmp_path, case, capsys):
    """The `extract` console script on a broken copy of the folder, 70 training images: exit code 2 and one line
    naming the file, row or value (or it works); the cache written before is byte for byte intact."""
    from genderfusion.cli.extract_commands import extract_main

    data = _grow(synth)
    argv = ["--backbone", "cnn-small", "--frozen", "--img-size", "32", "--pool", "avg", "--weights", "random",
            "--data", str(data), "--workdir", str(tmp_path / "ws"), "--no-progress"]
    extract_main(argv)
    cache = tmp_path / "ws/features/cnn-small-frozen.h5"
    before = sha(cache)
    shutil.rmtree(tmp_path / "ws/cache")  # decode again, from the broken folder
    break_it, code, message = BROKEN[case]
    break_it(data)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        extract_main(argv)
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert exit_.value.code == code, err
    if code:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert pytest.importorskip("re").search(message, err), err
        assert sha(cache) == before


def test_a_truncated_cache_is_one_line_for_train_head_and_recomputed_by_extract(pipeline, capsys):
    from genderfusion.cli.model_commands import train_head_main

    data, ws, sub = pipeline
    cache = ws / "features/cnn-small-frozen.h5"
    cache.write_bytes(cache.read_bytes()[:2000])
    model = sha(ws / "heads/fusion/model.safetensors")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train_head_main(["--features", "cnn-small,cnn-small-frozen", "--workdir", str(ws), "--head", "logistic"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "cnn-small-frozen.h5: damaged feature cache (its bytes changed since it was written" in err
    assert sha(ws / "heads/fusion/model.safetensors") == model
    out = extract_features(data, "cnn-small", ws, progress=False, **FROZEN)
    assert out.status == "computed" and "truncated" in out.reason


def test_workers_end_when_a_killed_extract_dies(tmp_path):
    """SIGKILL of the parent: its decode / chip workers end too, instead of running on as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = """
import os, time
from genderfusion.extract.workers import worker_pool
pool = worker_pool(2)
futures = [pool.submit(time.sleep, 60) for _ in range(2)]
time.sleep(1.0)
print(*[p.pid for p in pool._processes.values()], flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.1)
        for p in pids:  # reap them if they were re-parented to this process's tree
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
    assert not [p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
