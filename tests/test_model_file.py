"""Saved models are data: every head kind and protocol round-trips through the safetensors model file in another
process; crafted files (pickles with a payload, unsafe or oversized entries) are refused in one line without the
payload running; 1,000 damaged copies of an exported model each load equal or fail in one line."""
import ast
import io
import json
import re
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from genderfusion.fusion.model import model_file
from genderfusion.fusion.model.classifier import FusionClassifier
from genderfusion.fusion.model.export import export_model, fold_states
from genderfusion.fusion.model.features import load_sources
from genderfusion.fusion.model.model_file import ModelFileError
from genderfusion.fusion.model.protocol import cv_global
from genderfusion.heads import KNNHead, KnnSecondStage, LogisticHead, MajorityVote, MLPHead, WeightedVote

from conftest import SOURCES, fails

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickled, it creates `marker`: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _run(code: str, *args) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return np.hstack([y[:, None] + rng.normal(size=(n, 4)), rng.normal(size=(n, 30))]), y


HEAD_KINDS = {"logistic": LogisticHead(blocks=[4, 30], pca=3), "mlp": MLPHead(blocks=[4, 30], max_epochs=20),
              "knn": KNNHead(blocks=[4, 30]), "knn-ivf": KNNHead(blocks=[4, 30], ivf_threshold=100),
              "vote": MajorityVote(), "weighted-vote": WeightedVote()}


def test_every_head_kind_loads_in_another_process_with_the_same_p(tmp_path):
    from safetensors.numpy import save_file

    X, y = _blobs()
    np.save(tmp_path / "X.npy", X[200:])
    want = {}
    for name, head in HEAD_KINDS.items():
        head.fit(X[:200], y[:200])
        meta, arrays = head.to_state()
        save_file(arrays, tmp_path / f"{name}.safetensors", metadata={"state": json.dumps(meta)})
        want[name] = head.predict_proba(X[200:])[:, 1]
    stage = KnnSecondStage(blocks=[4, 30]).fit(X[:200], y[:200], np.linspace(0.3, 0.7, 200), np.arange(200) % 2)
    meta, arrays = stage.to_state()
    save_file(arrays, tmp_path / "second-stage.safetensors", metadata={"state": json.dumps(meta)})
    p_first = np.linspace(0.4, 0.6, 100)
    want["second-stage"] = stage.predict_proba(X[200:], p_first)
    assert "centroids" in KNNHead.from_state(*HEAD_KINDS["knn-ivf"].to_state()).to_state()[1]
    code = """import json, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
from genderfusion.heads import HEADS, VOTES, KnnSecondStage
folder = sys.argv[1]
X = np.load(folder + "/X.npy")
out = {}
for name in sys.argv[2:]:
    with safe_open(f"{folder}/{name}.safetensors", "np") as f:
        meta = json.loads(f.metadata()["state"])
    arrays = load_file(f"{folder}/{name}.safetensors")
    if name == "second-stage":
        out[name] = KnnSecondStage.from_state(meta, arrays).predict_proba(X, np.linspace(0.4, 0.6, 100)).tolist()
    else:
        cls = {**HEADS, **VOTES}[name.replace("-ivf", "")]
        out[name] = cls.from_state(meta, arrays).predict_proba(X)[:, 1].tolist()
print(json.dumps(out))"""
    got = json.loads(_run(code, tmp_path, *want))
    for name, p in want.items():
        assert np.abs(np.array(got[name]) - p).max() <= 1e-6, name
        assert 0 < np.ptp(p), name  # the comparison means something


def _models(ws) -> dict[str, FusionClassifier]:
    """A fitted model of every head kind and protocol, one with the second stage, one with a cascade."""
    data = load_sources(ws, SOURCES)
    models = {f"{head} [{protocol}]": FusionClassifier(SOURCES, head, protocol, workdir=ws).fit(data)
              for head in ("logistic", "mlp", "knn") for protocol in ("per-fold", "global", "pooled")}
    p_full = cv_global(data, lambda b: LogisticHead(blocks=b))
    second = models["second stage"] = FusionClassifier(SOURCES, "logistic", "global", workdir=ws).fit(data) \
        .fit_second_stage(data, p_full)
    q = second.details_cached()[1]["p_first_stage"]
    second.band = second.second_stage_.band = tuple(np.quantile(q, [0.25, 0.75]))  # some test rows in the band
    models["cascade"] = FusionClassifier(SOURCES, "knn", "global", workdir=ws).fit(data) \
        .fit_cascade(data, p_full, ["cnn-small"], head="mlp", tolerance=0.05)
    cascade = models["cascade"].cascade_
    cascade.band_ = tuple(np.quantile(cascade.oof_, [0.25, 0.75]))  # some rows exit, some go on
    return models


def test_every_protocol_and_stage_loads_in_another_process_with_the_same_p(work, tmp_path):
    _, ws = work
    want = {}
    for n, (name, clf) in enumerate(_models(ws).items()):
        path = clf.save(tmp_path / f"m{n}.safetensors")
        det = clf.details_cached()[1]
        want[str(path)] = (name, det["p_female"], det["stage"])
    code = """import json, sys
from genderfusion.fusion.model.classifier import FusionClassifier
out = {}
for path in sys.argv[1:]:
    det = FusionClassifier.load(path).details_cached()[1]
    out[path] = [det["p_female"].tolist(), det["stage"].tolist()]
print(json.dumps(out))"""
    got = json.loads(_run(code, *want))
    for path, (name, p, stage) in want.items():
        assert np.abs(np.array(got[path][0]) - p).max() <= 1e-6, name
        assert got[path][1] == stage.tolist(), name
    stages = {name: set(s.tolist()) for name, _, s in want.values()}
    assert stages["cascade"] == stages["second stage"] == {1, 2}  # both stages of each decided some rows
    from safetensors import safe_open

    with safe_open(next(iter(want)), "np") as f:  # a plain safetensors file: JSON in the header, arrays as tensors
        assert f.metadata()["format"] == model_file.FORMAT and "heads_.0.coef" in f.keys()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _entries(gfm: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(gfm) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


@pytest.fixture
def exported(work, tmp_path):
    """(data folder, workspace, an exported model with a cascade, the model it was exported from)."""
    from genderfusion.fusion.training.train_head import HeadTraining, train_head

    data_dir, ws = work
    train_head(ws, HeadTraining(SOURCES, ["logistic"], ("per-fold",), cascade=["cnn-small"], cascade_tolerance=0.2,
                                cascade_speed_n=0),
               log=lambda m: None)
    clf = FusionClassifier.load(ws / "heads/fusion")
    export_model(clf, tmp_path / "model.gfm", ws / "heads/fusion/card.html")
    return data_dir, ws, tmp_path / "model.gfm", clf


def _with_manifest(entries: dict[str, bytes], name: str, data: bytes) -> dict[str, bytes]:
    """Entries with `name` replaced by `data` and the manifest's sha256 of it updated (as an attacker would)."""
    import hashlib

    manifest = json.loads(entries["manifest.json"])
    manifest["entries"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {**entries, name: data, "manifest.json": json.dumps(manifest).encode()}


def test_crafted_model_files_are_refused_in_one_line_and_their_payload_never_runs(exported, tmp_path, capsys):
    from genderfusion.cli.model_commands import export_model_main
    from genderfusion.cli.predict_command import predict_main

    data_dir, ws, gfm, _ = exported
    marker = tmp_path / "PAYLOAD-RAN"
    payload = pickle.dumps({"format": "genderfusion-fusion-v2", "model": Payload(marker)})
    photo = str(next((data_dir / "test").glob("*.jpg")))
    legacy = r"made by genderfusion 0\.1\.0 or earlier with a format that could run code"
    # a model.pkl received from someone, by path; a pickle named like a model file
    for name in ("x.pkl", "x.safetensors"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ModelFileError, match=legacy):
            FusionClassifier.load(tmp_path / name)
        line = fails(predict_main, ["--model", str(tmp_path / name), "--images", photo, "--out",
                                    str(tmp_path / "p.csv")], capsys)
        assert "could run code" in line
    # a workspace model of an earlier version, by name: predict and export-model
    (ws / "heads/fusion/model.safetensors").unlink()
    (ws / "heads/fusion/model.pkl").write_bytes(payload)
    for main, argv in ((predict_main, ["--images", photo, "--out", str(tmp_path / "p.csv")]),
                       (export_model_main, ["--out", str(tmp_path / "e.gfm")])):
        assert "could run code" in fails(main, ["--model", "fusion", "--workdir", str(ws), *argv], capsys)
    entries = _entries(gfm)
    manifest = json.loads(entries["manifest.json"])
    crafted = {
        # version 1: a model.pkl entry beside a manifest that checks out
        "v1.gfm": {**{k: v for k, v in entries.items() if k != "model.safetensors"}, "model.pkl": payload,
                   "manifest.json": json.dumps({**manifest, "format": "genderfusion-export-v1"}).encode()},
        # version 2 whose model entry is a pickle, its sha256 in the manifest
        "v2-pickle.gfm": _with_manifest(entries, "model.safetensors", payload),
        # an entry the manifest lists under an unsafe name
        "listed-dotdot.gfm": _with_manifest(entries, "../../x", b"x"),
    }
    expected = {"v1.gfm": legacy, "v2-pickle.gfm": legacy, "listed-dotdot.gfm": r"'\.\./\.\./x', not a plain name"}
    for name, content in crafted.items():
        with pytest.raises(ModelFileError, match=expected[name]):
            FusionClassifier.load(_zip(tmp_path / name, content))
        line = fails(predict_main, ["--model", str(tmp_path / name), "--images", photo, "--out",
                                    str(tmp_path / "p.csv")], capsys)
        assert str(tmp_path / name) in line
    # an entry ../../x the manifest does not name: ignored, never written anywhere
    (tmp_path / "d/e").mkdir(parents=True)
    extra = FusionClassifier.load(_zip(tmp_path / "d/e/dotdot.gfm", {**entries, "../../x": b"x"}))
    assert model_file.dumps(extra) == model_file.dumps(FusionClassifier.load(gfm)) and not (tmp_path / "x").exists()
    assert not marker.exists()


def test_an_entry_declaring_4_gib_is_refused_before_it_is_read(exported, tmp_path):
    _, _, gfm, _ = exported
    path = tmp_path / "big.gfm"
    shutil.copy(gfm, path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(gfm) as z:
        info = z.getinfo("model.safetensors")
    # the central directory's record of the entry: its uncompressed size becomes 4 GiB - 2
    at = raw.find(b"model.safetensors", raw.find(b"PK\x01\x02"))
    record = raw.rfind(b"PK\x01\x02", 0, at)
    assert int.from_bytes(raw[record + 24:record + 28], "little") == info.file_size
    raw[record + 24:record + 28] = (2**32 - 2).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    t = time.time()
    with pytest.raises(ModelFileError, match=r"model.safetensors declares 4294967294 bytes .*not read"):
        FusionClassifier.load(path)
    assert time.time() - t < 5


def test_a_model_file_beyond_the_size_bound_is_refused_unread(tmp_path, monkeypatch):
    from genderfusion.fusion.model import model_file as mf

    big = tmp_path / "big.safetensors"
    with open(big, "wb") as fh:  # sparse: 3 GiB declared on disk, nothing written
        fh.truncate(3 * 2**30)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read before the bound was checked"))
    with pytest.raises(ModelFileError, match=rf"big.safetensors: {3 * 2**30} bytes, beyond the bound of "
                                             rf"{mf.MAX_BYTES} for a model file; not read"):
        FusionClassifier.load(big)


def test_fold_checkpoints_with_a_payload_are_refused_by_extract_predict_and_a_resumed_train_backbone(
        work, tmp_path, capsys):
    from genderfusion.files.atomic import write_json
    from genderfusion.files.digests import sha256_file
    from genderfusion.files.json_files import read_json
    from genderfusion.cli.extract_commands import extract_main, train_backbone_main
    from genderfusion.extract.models.checkpoints import read_checkpoint

    data_dir, ws = work
    marker = tmp_path / "PAYLOAD-RAN"
    best = ws / "models/cnn-small/fold0.pt"
    ckpt = read_checkpoint(best)  # the package's own checkpoints load weights-only
    assert set(ckpt) >= {"state_dict", "identity", "preprocess"}
    torch.save({**ckpt, "epoch": Payload(marker)}, best)
    done = ws / "models/cnn-small/fold0.json"
    write_json(done, {**read_json(done), "sha256": sha256_file(best)})  # the record agrees, as an attacker's would
    line = fails(extract_main, ["--backbone", "cnn-small", "--data", str(data_dir), "--workdir", str(ws), "--force",
                                "--no-progress"], capsys)
    assert "fold0.pt: not a checkpoint this package reads" in line
    last = ws / "models/cnn-small/fold1.last.pt"
    torch.save({"identity": Payload(marker)}, last)
    (ws / "models/cnn-small/fold1.json").unlink()
    line = fails(train_backbone_main, ["--backbone", "cnn-small", "--img-size", "32", "--epochs", "1",
                                       "--batch-size", "16", "--folds", "2", "--fold", "1", "--data", str(data_dir),
                                       "--workdir", str(ws), "--no-progress"], capsys)
    assert "fold1.last.pt: not a checkpoint this package reads" in line
    assert not marker.exists()


def _bzip2_bomb(path: Path, megabytes: int) -> Path:
    """A zip whose manifest.json inflates to `megabytes` MiB of spaces from a few kilobytes (bzip2)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as z, z.open("manifest.json", "w", force_zip64=True) as fh:
        for _ in range(megabytes):
            fh.write(b" " * 2**20)
    assert path.stat().st_size < 64 * 1024
    return path


def test_damaged_exported_files_are_refused_in_one_line_each(exported, tmp_path, capsys):
    from genderfusion.cli.model_commands import export_model_main
    from genderfusion.cli.predict_command import predict_main

    data_dir, ws, gfm, _ = exported
    entries = _entries(gfm)
    manifest = json.loads(entries["manifest.json"])
    fold1 = "folds/cnn-small/fold1.safetensors"

    def with_doc(doc) -> dict[str, bytes]:
        return {**entries, "manifest.json": json.dumps(doc).encode()}

    one_fold = json.loads(entries["manifest.json"])
    one_fold["folds"]["cnn-small"] = one_fold["folds"]["cnn-small"][:1]
    cases = {  # name -> (archive entries or a file's bytes, what the line says)
        "fewer-fold-entries": ({k: v for k, v in entries.items() if k != fold1}, f"the entry {fold1} is missing"),
        "fewer-folds-in-manifest": (with_doc(one_fold), "holds 1 fold\\(s\\) of cnn-small, the model has 2"),
        "manifest-list": (with_doc([manifest]), "manifest.json is not an object"),
        "manifest-no-folds": (with_doc({k: v for k, v in manifest.items() if k != "folds"}), "lacks its entries"),
        "manifest-not-json": ({**entries, "manifest.json": b"{nope"}, "manifest.json is not valid JSON"),
        "halved-tensor": ({**entries, fold1: entries[fold1][:len(entries[fold1]) // 2]}, f"{fold1} is damaged"),
        "no-model-entry": ({k: v for k, v in entries.items() if k != "model.safetensors"},
                           "the entry model.safetensors is missing"),
        "truncated": (gfm.read_bytes()[:len(gfm.read_bytes()) // 2], "not a readable exported model"),
        "empty": (b"", "not a readable exported model"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / f"{name}.gfm"
        if isinstance(content, dict):
            _zip(path, content)
        else:
            path.write_bytes(content)
        line = fails(predict_main, ["--model", str(path), "--images", str(data_dir / "test"), "--out",
                                    str(tmp_path / "p.csv")], capsys)
        assert str(path) in line and re.search(expected, line), (name, line)
    t = time.time()
    line = fails(predict_main, ["--model", str(_bzip2_bomb(tmp_path / "bomb.gfm", 512)), "--images",
                                str(data_dir / "test")], capsys)
    assert "manifest.json declares 536870912 bytes" in line and time.time() - t < 10
    other = _zip(tmp_path / "photos.zip", {"a.txt": b"x"})  # a .zip path is a file, not a model name
    assert "the entry manifest.json is missing" in fails(predict_main, ["--model", str(other), "--images",
                                                                        str(data_dir / "test")], capsys)
    assert "is an exported model already" in fails(export_model_main, ["--model", str(gfm), "--out",
                                                                       str(tmp_path / "again.gfm")], capsys)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "again.gfm").exists()


def _mutations(raw: bytes, entries: dict[str, bytes], rng: np.random.Generator, n: int):
    """n seeded mutations of an exported file: truncations, bit flips, entries dropped, entries' contents or
    order swapped."""
    names = list(entries)
    for i in range(n):
        kind = ("truncate", "flip", "drop", "swap")[i % 4]
        if kind == "truncate":
            yield kind, raw[:int(rng.integers(0, len(raw)))]
        elif kind == "flip":
            data = bytearray(raw)
            for at in rng.integers(0, len(raw) * 8, int(rng.integers(1, 4))):
                data[at // 8] ^= 1 << (at % 8)
            yield kind, bytes(data)
        else:
            a, b = rng.choice(len(names), 2, replace=False)
            if kind == "drop":
                kept = {k: v for k, v in entries.items() if k != names[a]}
            elif rng.random() < 0.5:  # contents swapped under the names
                kept = {**entries, names[a]: entries[names[b]], names[b]: entries[names[a]]}
            else:  # order swapped
                order = list(names)
                order[a], order[b] = order[b], order[a]
                kept = {k: entries[k] for k in order}
            with zipfile.ZipFile(buf := io.BytesIO(), "w") as z:  # stored
                for k, v in kept.items():
                    z.writestr(k, v)
            yield kind, buf.getvalue()


def test_a_thousand_damaged_copies_each_load_equal_or_fail_in_one_line(exported, tmp_path):
    from genderfusion.extract.errors import WorkspaceError

    _, _, gfm, _ = exported
    raw, entries = gfm.read_bytes(), _entries(gfm)
    original = FusionClassifier.load(gfm)
    want_state, want_folds = model_file.dumps(original), fold_states(original)
    outcomes: dict[str, int] = {}
    t = time.time()
    for n, (kind, data) in enumerate(_mutations(raw, entries, np.random.default_rng(0), 1000)):
        path = tmp_path / f"m{n % 7}.gfm"
        path.write_bytes(data)
        try:
            clf = FusionClassifier.load(path)
        except (ModelFileError, WorkspaceError) as exc:
            msg = str(exc)
            assert "\n" not in msg and str(path) in msg, (kind, msg)
            outcomes["error"] = outcomes.get("error", 0) + 1
            continue
        assert model_file.dumps(clf) == want_state, kind
        folds = fold_states(clf)
        assert folds.keys() == want_folds.keys() and all(
            all(torch.equal(a[1][k], b[1][k]) for a, b in zip(folds[m][1], want_folds[m][1]) for k in a[1])
            for m in folds), kind
        outcomes["equal"] = outcomes.get("equal", 0) + 1
    assert time.time() - t < 60
    assert outcomes.get("equal", 0) >= 100 and outcomes.get("error", 0) >= 500, outcomes


def _call_name(f: ast.expr) -> str:
    if isinstance(f, ast.Name):
        return f.id
    return f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""


def _unsafe_calls(tree: ast.AST) -> list[str]:
    """Calls that can run code from what they read: pickle.load(s) and Unpickler, torch.load without
    weights_only=True, np.load with allow_pickle=True, eval and exec."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node.func)
        kw = {k.arg: k.value for k in node.keywords}

        def given(key: str, value) -> bool:
            return isinstance(kw.get(key), ast.Constant) and kw[key].value is value

        if (name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "eval", "exec")
                or name == "torch.load" and not given("weights_only", True)
                or name in ("np.load", "numpy.load") and given("allow_pickle", True)):
            found.append(f"line {node.lineno}: {name}")
    return found


def test_no_package_source_unpickles_evaluates_or_loads_torch_files_unsafely():
    sources = [p for folder in ("genderfusion", "extract", "fusion", "heads") for p in (ROOT / folder).rglob("*.py")]
    assert len(sources) > 50
    bad = {str(p.relative_to(ROOT)): f for p in sources if (f := _unsafe_calls(ast.parse(p.read_text())))}
    assert not bad
    planted = ast.parse("import pickle, torch, numpy as np\npickle.loads(b'')\ntorch.load('x')\n"
                        "torch.load('x', weights_only=True)\nnp.load('x', allow_pickle=True)\nnp.load('x')\n"
                        "eval('1')\nmodel.eval()\n")
    assert _unsafe_calls(planted) == ["line 2: pickle.loads", "line 3: torch.load", "line 5: np.load",
                                      "line 7: eval"]
