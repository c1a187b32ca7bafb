"""The pretrained face networks as fine-tunable backbones: the gender CNN converted from its ONNX graph, the face
ResNet trained above a cut on cached trunk activations, and their sources."""
import numpy as np
import pytest
import torch

from genderfusion.extract.faces import faceres
from genderfusion.extract.models.backbone import create
from genderfusion.extract.models.inference import infer, infer_above

pytest.importorskip("dlib")
ort = pytest.importorskip("onnxruntime")
HAVE_FACERES = (faceres.model_dir() / "faceres-deep.json").is_file()
needs_faceres = pytest.mark.skipif(not HAVE_FACERES,
                                   reason="FaceRes files absent (fetch-faceres, or GENDERFUSION_FACERES_DIR)")


def _u8(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_converted_gender_cnn_reproduces_the_onnx_graph():
    from genderfusion.extract.faces.face_files import gender_model_path
    from genderfusion.extract.faces.face_nets import _gender_graph

    path, _ = gender_model_path()
    sess = ort.InferenceSession(_gender_graph(str(path), "layer_6_averagepool"), providers=["CPUExecutionProvider"])
    chips = _u8(16, 32)
    x = (chips.astype(np.float32) - np.array([122.781998, 117.000999, 104.297997], np.float32)) / 256.0
    pooled, two = sess.run(["layer_6_averagepool", "logits"], {"images": x.transpose(0, 3, 1, 2).copy()})
    model = create("gender-cnn", 32)
    logits, feats = infer(model, chips, np.arange(16), pool="flatten")
    assert np.abs(feats - pooled.reshape(16, -1)).max() <= 1e-4
    assert np.abs(logits - (two[:, 0] - two[:, 1])).max() <= 1e-4  # one logit: female - male
    assert np.ptp(logits) > 0.1  # not a constant on both sides


def test_face_resnet_above_cached_activations_equals_the_whole_network():
    from genderfusion.extract.models.trunk_cache import trunk_activations

    model = create("face-resnet", 150).eval()
    chips = _u8(6, 150, seed=1)
    whole, whole_f = infer(model, chips, np.arange(6), pool="avg")
    mirror, _ = infer(model, np.ascontiguousarray(chips[:, :, ::-1]), np.arange(6))
    for cut in ("stage3", "stage4"):
        acts = trunk_activations(model, chips, cut, torch.device("cpu"), dtype=np.float32)
        top, top_f = infer_above(model, acts[:, 0], cut, pool="avg")
        assert np.abs(top - whole).max() <= 1e-4 and np.abs(top_f - whole_f).max() <= 1e-4
        assert np.abs(infer_above(model, acts[:, 1], cut)[0] - mirror).max() <= 1e-4  # view 1: the mirror
        cached = trunk_activations(model, chips, cut, torch.device("cpu"))  # float16, as cached on disk
        assert np.abs(infer_above(model, cached[:, 0], cut)[0] - whole).max() <= 2e-2


def test_augmented_trunk_views_are_the_trunk_of_augmented_chips():
    from genderfusion.extract.models.augment import AugmentConfig, augment, normalize, to_float
    from genderfusion.extract.models.trunk_cache import trunk_activations

    model = create("face-resnet", 150).eval()
    chips = _u8(5, 150, seed=2)
    cfg = AugmentConfig(rotation_deg=15)
    acts = trunk_activations(model, chips, "stage4", torch.device("cpu"), dtype=np.float32, views=4,
                             augment_cfg=cfg, seed=3)
    plain = trunk_activations(model, chips, "stage4", torch.device("cpu"), dtype=np.float32)
    assert acts.shape[1] == 4 and np.array_equal(acts[:, :2], plain)  # views 0 and 1 stay the image and mirror
    for view in (2, 3):  # reference: the project's augment() with the view's own generator, then the trunk
        x = augment(to_float(torch.from_numpy(chips)), cfg, torch.Generator().manual_seed(3 * 1000 + view))
        with torch.inference_mode():
            ref = model.body.trunk(normalize(x, model.preprocess.mean, model.preprocess.std), "stage4").numpy()
        assert np.abs(acts[:, view] - ref).max() <= 1e-4 and np.abs(acts[:, view] - acts[:, 0]).max() > 0.1
    with pytest.raises(ValueError, match="at least 2"):
        from genderfusion.extract.models.training import TrainConfig

        TrainConfig("face-resnet", trunk_views=1)


def test_face_resnet_keeps_dlibs_descriptor_under_a_new_output_layer():
    from genderfusion.extract.faces.face_nets import FaceNet, face_net_config

    model = create("face-resnet", 150).eval()
    chips = _u8(4, 150, seed=2)
    ref, _ = FaceNet(face_net_config("dlib-face")).run(chips)
    _, pooled = infer(model, chips, np.arange(4), pool="avg")
    with torch.no_grad():
        desc = model.head.fc(torch.from_numpy(pooled)).numpy()
    assert np.abs(desc - ref).max() <= 1e-4


def test_a_cut_that_does_not_exist_lists_the_valid_ones(synth, tmp_path):
    from genderfusion.extract.models.training import TrainConfig, train_backbone

    with pytest.raises(ValueError, match=r"unknown cut 'stage9'.*stage2 \(64x17x17\), stage3 \(128x8x8\), stage4"):
        train_backbone(synth, TrainConfig("face-resnet", trunk_cut="stage9"), tmp_path / "ws", progress=False)
    with pytest.raises(ValueError, match=r"cnn-small has no frozen trunk to cut; a trunk cut is for face-resnet, "
                                         r"faceres-mobilenet"):
        train_backbone(synth, TrainConfig("cnn-small", trunk_cut="stage3"), tmp_path / "ws", progress=False)
    with pytest.raises(ValueError, match="gender-cnn takes 32 px inputs"):
        create("gender-cnn", 64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """face-resnet, gender-cnn and (when its files are present) faceres-mobilenet fine-tuned on 2 folds of a small
    synthetic set, and their caches."""
    from genderfusion.extract.cache.api import extract_features
    from genderfusion.extract.data.synthetic import make_synthetic
    from genderfusion.extract.models.training import TrainConfig, train_backbone

    root = tmp_path_factory.mktemp("facenets")
    data = make_synthetic(root / "comp", n_train=24, n_test=6, size=48, seed=3)
    ws = root / "ws"
    out = {}
    for name in ("face-resnet", "gender-cnn") + (("faceres-mobilenet",) if HAVE_FACERES else ()):
        # a short weight average: the default's (0.998) would keep two steps' models at their pretrained weights
        s = train_backbone(data, TrainConfig(name, epochs=1, batch_size=8, lr=1e-4, ema=0.5), ws, k=2,
                           progress=False)
        out[name] = (s, extract_features(data, name, ws, progress=False))
    return data, ws, out


def test_a_training_rows_feature_comes_from_the_fold_model_that_held_it_out(trained):
    from genderfusion.extract.cache import format as fc
    from genderfusion.extract.data.dataset import CompetitionData
    from genderfusion.extract.data.workspace import Workspace
    from genderfusion.extract.sources.base import Input
    from genderfusion.extract.sources.inputs import RowInputs

    data_dir, ws_dir, out = trained
    data, ws = CompetitionData.load(data_dir), Workspace(ws_dir)
    for name, (summary, outcome) in out.items():
        f = fc.load(outcome.path)
        assert outcome.path.name == f"{name}-flip.h5" and f.kind == "finetuned"  # flip TTA: the face nets' default
        inp = Input.of(f.attrs["recipe"])
        images = RowInputs(ws, data, progress=False).all("train", inp)
        pool = f.attrs["recipe"]["pooling"]
        assert pool == ("flatten" if name == "gender-cnn" else "avg")

        def fold_model_output(k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Logits and features of fold k's model on rows, averaged over the image and its mirror (the whole
            network in torch: the extraction ran the frozen trunk once for both folds, FaceRes's on onnxruntime)."""
            ckpt = torch.load(ws.fold_files(name, k).best, map_location="cpu", weights_only=False)
            model = create(name, inp.size, weights="random")
            model.load_state_dict(ckpt["state_dict"])
            a = infer(model, images, rows, pool=pool)
            b = infer(model, np.ascontiguousarray(images[:, :, ::-1]), rows, pool=pool)
            return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2

        for k in (0, 1):
            rows = np.flatnonzero(f.train.fold == k)
            got = f.train.features[rows].astype(np.float32)
            logits, feats = fold_model_output(k, rows)
            _, other = fold_model_output(1 - k, rows)
            tol = 1e-2 * max(1.0, np.abs(feats).max())
            assert np.abs(got - feats).max() <= tol and np.abs(f.train.logits[rows] - logits).max() <= 1e-2
            assert np.abs(got - other).max() > tol  # the other fold's model would give other features
    assert out["face-resnet"][0]["trunk_cache"]["bytes"] == 24 * 2 * 128 * 8 * 8 * 2


def test_the_trunk_cache_is_reused_and_recomputed_when_its_recipe_changes(trained, caplog):
    import logging

    from genderfusion.extract.models.training import TrainConfig, train_backbone

    data_dir, ws_dir, out = trained
    path = ws_dir / "cache/trunk/train_face-resnet_stage3.npy"
    before = path.stat().st_mtime_ns
    train_backbone(data_dir, TrainConfig("face-resnet", epochs=1, batch_size=8, lr=1e-4, ema=0.5), ws_dir,
                   progress=False)
    assert path.stat().st_mtime_ns == before  # reused: the folds were done, the cache not rebuilt
    meta = path.with_suffix(".json")
    meta.write_text(meta.read_text().replace('"weights_sha256": "', '"weights_sha256": "another-dat-'))
    with caplog.at_level(logging.INFO):
        train_backbone(data_dir, TrainConfig("face-resnet", epochs=1, batch_size=8, lr=1e-4, ema=0.5), ws_dir,
                       progress=False)
    assert path.stat().st_mtime_ns != before
    assert any("trunk cache" in r.message and "is stale (weights_sha256: 'another-dat-" in r.message
               for r in caplog.records)


def test_an_interrupted_face_resnet_run_resumes_to_the_same_model(synth, tmp_path, monkeypatch):
    from genderfusion.extract.models import training as train_mod
    from genderfusion.extract.models.training import TrainConfig, train_backbone

    cfg = dict(epochs=3, batch_size=8, patience=5)
    train_backbone(synth, TrainConfig("face-resnet", **cfg), tmp_path / "a", k=2, fold=0, progress=False)
    real, calls = train_mod.TrunkFeed.train_logits, []

    def dying(self, *args):
        calls.append(1)
        if len(calls) == 6:  # in epoch 2 (4 batches an epoch)
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(train_mod.TrunkFeed, "train_logits", dying)
    with pytest.raises(KeyboardInterrupt):
        train_backbone(synth, TrainConfig("face-resnet", **cfg), tmp_path / "b", k=2, fold=0, progress=False)
    monkeypatch.setattr(train_mod.TrunkFeed, "train_logits", real)
    train_backbone(synth, TrainConfig("face-resnet", **cfg), tmp_path / "b", k=2, fold=0, progress=False)
    a = torch.load(tmp_path / "a/models/face-resnet/fold0.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b/models/face-resnet/fold0.pt", weights_only=False)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    fresh = create("face-resnet", 150)
    assert not torch.allclose(a["body.blocks.12.conv2.weight"], fresh.state_dict()["body.blocks.12.conv2.weight"])
    assert torch.equal(a["body.blocks.3.conv1.weight"], fresh.state_dict()["body.blocks.3.conv1.weight"])  # frozen


@needs_faceres
def test_faceres_in_torch_reproduces_the_converted_graph_whole_and_above_its_cuts():
    from genderfusion.extract.faces.face_nets import FaceNet, face_net_config
    from genderfusion.extract.models.trunk_cache import trunk_activations

    model = create("faceres-mobilenet", 224).eval()
    images = _u8(3, 224, seed=4)
    ref, _ = FaceNet(face_net_config("faceres-deep")).run(images)  # onnxruntime on the converted TF.js graph
    logits, pooled = infer(model, images, np.arange(3), pool="avg")
    with torch.no_grad():
        feats = model.head.relu(model.head.feats(torch.from_numpy(pooled))).numpy()
    assert np.abs(feats - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()) and np.ptp(ref) > 0.1
    for cut in ("pw11", "pw12"):
        acts = trunk_activations(model, images, cut, torch.device("cpu"), dtype=np.float32)
        top, top_f = infer_above(model, acts[:, 0], cut, pool="avg")
        assert np.abs(top - logits).max() <= 1e-4 and np.abs(top_f - pooled).max() <= 1e-4


def test_a_tfjs_graph_that_is_not_faceres_names_the_first_node_that_differs(tmp_path):
    import json

    from genderfusion.extract.faces.faceres_torch import FaceResFormatError, tfjs_state_dict

    kernel = np.zeros((3, 3, 3, 8), "<f4")
    (tmp_path / "g.bin").write_bytes(kernel.tobytes())
    (tmp_path / "g.json").write_text(json.dumps({"format": "graph-model", "modelTopology": {"node": [
        {"name": "x", "op": "Placeholder"}, {"name": "k", "op": "Const"},
        {"name": "c1", "op": "Conv2D", "input": ["x", "k"]}]},
        "weightsManifest": [{"paths": ["g.bin"], "weights": [{"name": "k", "shape": [3, 3, 3, 8], "dtype": "float32"}]}]}))
    with pytest.raises(FaceResFormatError, match=r"node 'c1' \(Conv2D\): unit 0 is \(8, 3, 3, 3\) stride 1, "
                                                 r"expected \(32, 3, 3, 3\) stride 2 SAME"):
        tfjs_state_dict(tmp_path / "g.json")


def test_a_fused_model_runs_the_shared_dlib_trunk_once(trained, monkeypatch):
    """face-resnet's fold models and dlib-face share dlib's frozen trunk: with a memo (FusionClassifier's, one a
    call) it runs once a view for both, and each source's outputs equal those it computes alone."""
    from genderfusion.extract.cache import format as fc
    from genderfusion.extract.data.workspace import Workspace
    from genderfusion.extract.faces.face_nets import FaceNet
    from genderfusion.extract.sources.spec import build_source, source_recipe, source_spec

    data_dir, ws_dir, out = trained
    ws = Workspace(ws_dir)
    resnet = build_source(fc.load(out["face-resnet"][1].path).attrs["recipe"], ws, device="cpu")
    dlib = build_source(source_recipe(source_spec("dlib-face"), ws, 1, None), ws, device="cpu")
    assert resnet.input == dlib.input and resnet.shared_key() == dlib.shared_key() is not None
    chips = _u8(5, 150, seed=4)
    alone = [s.compute_spaces(chips, range(s.n_spaces)) for s in (resnet, dlib)]
    calls, trunk = [], FaceNet.trunk
    monkeypatch.setattr(FaceNet, "trunk", lambda self, x: calls.append(len(x)) or trunk(self, x))
    memo: dict = {}
    together = [s.compute_spaces(chips, range(s.n_spaces), memo) for s in (resnet, dlib)]
    assert calls == [] and len(memo) == 2  # dlib-face took face-resnet's trunk of the chips and of their mirrors
    for a, t in zip(alone, together):
        for (fa, la), (ft, lt) in zip(a, t):
            assert np.abs(fa - ft).max() <= 1e-4 and (la is None or np.abs(la - lt).max() <= 1e-4)
    net = FaceNet(dlib.cfg)  # dlib's descriptor network whole, on the chips and their mirrors
    ref = (net.run(chips)[0] + net.run(np.ascontiguousarray(chips[:, :, ::-1]))[0]) / 2
    assert np.abs(together[1][0][0] - ref).max() <= 1e-4 and np.ptp(ref) > 0.1


def test_an_exported_model_predicts_without_its_workspace(trained, tmp_path):
    """export-model writes one file: face-resnet's fold tensors without dlib's frozen trunk (read from the package
    again), gender-cnn's whole; loaded in another process, from another folder, with the workspace gone, it gives
    the workspace model's P within 1e-5. A frozen file of another sha256 and another format are refused."""
    import json
    import subprocess
    import sys
    import zipfile

    from genderfusion.fusion.model.classifier import FusionClassifier
    from genderfusion.cli.model_commands import export_model_main
    from genderfusion.fusion.model.export import read_manifest
    from genderfusion.fusion.training.train_head import HeadTraining, train_head

    data_dir, ws_dir, out = trained
    names = [out[n][1].path.stem for n in ("face-resnet", "gender-cnn")] + ["dlib-face-flip"]
    from genderfusion.extract.cache.api import extract_features

    extract_features(data_dir, "dlib-face", ws_dir, progress=False)
    train_head(ws_dir, HeadTraining(names, ["logistic"], protocols=("per-fold",), name="exp", cascade=names[1:2],
                                    cascade_tolerance=0.2, cascade_speed_n=0),
               log=lambda m: None)
    paths = sorted(str(p) for p in (data_dir / "test").glob("*.jpg"))
    clf = FusionClassifier.load(ws_dir / "heads/exp/model.safetensors")
    assert clf.cascade_ is not None
    ref = [clf.predict_proba(paths, device="cpu", cascade=c)[:, 1] for c in (True, False)]
    gfm = tmp_path / "model.gfm"
    export_model_main(["--model", "exp", "--workdir", str(ws_dir), "--out", str(gfm)])
    m = read_manifest(gfm)
    assert m["stages"] == {"1": f"cascade: {names[1]}", "2": "logistic [per-fold] on every source"}
    resnet = m["folds"]["face-resnet"]
    assert len(resnet) == 2 and all(f["over_pretrained"] and f["tensors"] < f["of"] for f in resnet)
    assert {"dlib-face:model", "dlib-face:shape_predictor", "gender-cnn:model"} <= set(m["frozen_files"])
    moved = ws_dir.rename(tmp_path / "gone")  # no workspace anywhere the model could find
    try:
        code = ("import json, sys; from genderfusion import FusionClassifier; "
                "clf = FusionClassifier.load(sys.argv[1]); "
                "print(json.dumps([clf.predict_proba(sys.argv[2:], device='cpu', cascade=c)[:, 1].tolist() "
                "for c in (True, False)]))")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        proc = subprocess.run([sys.executable, "-c", code, str(gfm), *paths], cwd=elsewhere, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
        assert np.abs(np.array(json.loads(proc.stdout)) - np.array(ref)).max() <= 1e-5  # with the cascade, without
    finally:
        moved.rename(ws_dir)
    for what in ("sha256", "format"):
        bad = tmp_path / f"{what}.gfm"
        with zipfile.ZipFile(gfm) as src, zipfile.ZipFile(bad, "w") as dst:
            for item in src.infolist():
                body = src.read(item)
                if item.filename == "manifest.json":
                    doc = json.loads(body)
                    if what == "sha256":
                        doc["frozen_files"]["gender-cnn:model"] = "0" * 64
                    else:
                        doc["format"] = "genderfusion-export-v0"
                    body = json.dumps(doc).encode()
                dst.writestr(item, body)
        expected = (r"the installed gender-cnn:model has sha256 [0-9a-f]{64}, the model was exported with 0{64}"
                    if what == "sha256" else r"an exported model of format 'genderfusion-export-v0'")
        with pytest.raises((ValueError, RuntimeError), match=expected):
            FusionClassifier.load(bad)
