import csv
import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from genderfusion.extract.cache import format as fc
from genderfusion.extract.cache.api import extract_features
from genderfusion.extract.errors import BadImageError, WorkspaceError
from genderfusion.extract.models.training import train_backbone
from genderfusion.extract.models.training import TrainConfig
from genderfusion.fusion.model.classifier import FusionClassifier
from genderfusion.fusion.model.features import FeatureMismatchError, load_sources
from genderfusion.fusion.predict.submission import predict_submission
from genderfusion.fusion.model.protocol import cv_global, cv_per_fold, per_fold_matrix, pooled_blocks, pooled_matrix
from genderfusion.fusion.training.train_head import HeadTraining, train_head
from genderfusion.heads import LogisticHead

from conftest import SOURCES


def _spy(seen: list) -> type:
    """A logistic head that records the rows it is fitted on (in `seen`) and refuses to predict any of them."""
    class Spy(LogisticHead):
        def fit(self, X, y):
            seen.append({tuple(r) for r in X.round(4)})
            return super().fit(X, y)

        def predict_proba(self, X):
            assert not {tuple(r) for r in X.round(4)} & seen[-1], "a head predicted rows it was trained on"
            return super().predict_proba(X)

    return Spy


def test_per_fold_protocol_never_trains_on_the_row_it_predicts(work, monkeypatch):
    _, ws = work
    data = load_sources(ws, ["cnn-small"])
    fold_rows = [{tuple(r) for r in per_fold_matrix(data.sources, np.flatnonzero(data.fold == k)).round(4)}
                 for k in range(data.k)]
    seen = []
    Spy = _spy(seen)
    probs = cv_per_fold(data, lambda b: Spy(blocks=b))
    assert probs.shape == data.y.shape and len(seen) == data.k * 3
    for n, rows in enumerate(seen):  # inner CV: 3 heads per fold, fold by fold
        assert rows <= fold_rows[n // 3], f"head {n} of fold {n // 3} trained on rows of another fold"
    # the saved per-fold model: head k is fitted on fold k's rows only
    fitted, real_fit = [], LogisticHead.fit

    def recording_fit(self, X, y):
        fitted.append({tuple(r) for r in np.asarray(X).round(4)})
        return real_fit(self, X, y)

    monkeypatch.setattr(LogisticHead, "fit", recording_fit)
    FusionClassifier(["cnn-small"], "logistic", "per-fold", workdir=ws).fit(data)
    assert fitted == fold_rows
    g = cv_global(data, lambda b: Spy(blocks=b))
    assert ((g >= 0.5) == data.y).mean() > 0.4


def test_train_head_table_model_and_cached_rerun(work):
    _, ws = work
    report = train_head(ws, HeadTraining(SOURCES, ["logistic", "knn"], ("per-fold", "global", "pooled")),
                        log=lambda s: None)
    methods = {(r["method"], r["protocol"]) for r in report["rows"]}
    assert {("cnn-small", "out-of-fold logit"), ("logistic", "per-fold"), ("logistic", "global"),
            ("logistic", "pooled"), ("knn", "per-fold"), ("knn", "global"), ("knn", "pooled")} <= methods
    assert (ws / "heads/fusion/model.safetensors").exists() and (ws / "heads/fusion/report.md").exists()
    for png in ("accuracy.png", "confusion.png", "histogram.png", "groups.png"):
        assert (ws / "heads/fusion" / png).stat().st_size > 1000
    assert sum(map(sum, report["confusion"])) == 60
    assert "age 0-2" in report["rows"][0]["groups"]
    again = train_head(ws, HeadTraining(SOURCES, ["logistic", "knn"], ("per-fold", "global", "pooled")),
                       log=lambda s: None)
    assert again["cached"] and again["rows"] == report["rows"]


def _h5(ws, source: str, name: str) -> np.ndarray:
    with h5py.File(ws / "features" / f"{source}.h5", "r") as f:
        return f[name][()]


def test_pooled_protocol_reads_held_out_features_and_averages_the_fold_models(work):
    _, ws = work
    data = load_sources(ws, SOURCES)
    fine, frozen = SOURCES
    # a training row's fine-tuned block is the cache's own row (the fold model that held it out) and its logit
    X = pooled_matrix(data.sources)
    assert pooled_blocks(data.sources) == [data.source(fine).width, 1, data.source(frozen).width] == \
        [_h5(ws, fine, "train/features").shape[1], 1, _h5(ws, frozen, "train/features").shape[1]]
    order = {i.decode(): n for n, i in enumerate(_h5(ws, fine, "train/ids"))}
    rows = [order[i] for i in data.ids]
    w = data.source(fine).width
    assert np.array_equal(X[:, :w], _h5(ws, fine, "train/features")[rows])
    assert np.array_equal(X[:, w], _h5(ws, fine, "train/logits")[rows])
    # the CV: each fold scored by a head that never saw it
    seen = []
    cv_global(data, lambda b: _spy(seen)(blocks=b), X, pooled_blocks(data.sources))
    assert len(seen) == data.k
    # a test row: the mean over the fold models of the head on that fold model's features and logit
    clf = FusionClassifier(SOURCES, "logistic", "pooled", workdir=ws).fit(data)
    ids, p = clf.predict_proba_cached()
    assert [i.decode() for i in _h5(ws, fine, "test/ids")] == list(ids)
    feats, logits, other = _h5(ws, fine, "test/features"), _h5(ws, fine, "test/logits"), _h5(ws, frozen, "test/features")
    by_model = [clf.heads_[0].predict_proba(np.hstack([feats[k], logits[k][:, None], other[0]]))[:, 1]
                for k in range(data.k)]
    assert not np.allclose(by_model[0], by_model[1])  # the fold models differ, so the average matters
    assert np.allclose(p[:, 1], np.mean(by_model, 0), atol=1e-6)


def test_classifier_predicts_images_like_the_cache(work, built):
    data_dir, ws = work
    for protocol in ("global", "pooled"):
        clf = FusionClassifier.load(FusionClassifier(SOURCES, "logistic", protocol, workdir=ws).fit().save(ws / "m.safetensors"))
        ids, cached = clf.predict_proba_cached()
        paths = [data_dir / "test" / f"{i}.jpg" for i in ids[:3]]
        assert np.allclose(clf.predict_proba(paths)[:, 1], cached[:3, 1], atol=1e-4), protocol
    clf = FusionClassifier(SOURCES, "logistic", "per-fold", workdir=ws).fit()
    path = clf.save(ws / "m.safetensors")
    clf = FusionClassifier.load(path)
    ids, cached = clf.predict_proba_cached()
    paths = [data_dir / "test" / f"{i}.jpg" for i in ids[:4]]
    pil = Image.open(paths[1])
    arr = np.asarray(Image.open(paths[2]).convert("RGB"))
    tensor = torch.from_numpy(np.asarray(Image.open(paths[3]).convert("RGB")).copy()).permute(2, 0, 1)
    p = clf.predict_proba([str(paths[0]), pil, arr, tensor])
    assert p.shape == (4, 2) and np.allclose(p[:, 1], cached[:4, 1], atol=1e-4)
    assert clf.predict(paths[:2]).tolist() == (cached[:2, 1] >= 0.5).astype(int).tolist()
    with pytest.raises(FileNotFoundError, match=r"image 1: .*nope.jpg"):
        clf.predict_proba([paths[0], ws / "nope.jpg"])
    bad = ws / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match=r"bad.jpg: cannot decode image \(image 1"):
        clf.predict_proba([paths[0], bad])


def test_predict_writes_complete_submission_and_refuses_changed_checkpoints(work, tmp_path):
    data_dir, ws = work
    train_head(ws, HeadTraining(SOURCES, ["logistic"], protocols=("global",)), log=lambda s: None)
    out = predict_submission("fusion", data_dir, tmp_path / "sub.csv", ws)
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    test_ids = (data_dir / "test.csv").read_text().split()[1:]
    assert lines[0] == "id,label" and [line.split(",")[0] for line in lines[1:]] == test_ids
    assert {line.split(",")[1] for line in lines[1:]} <= {"0", "1"} and out["rows"] == 12
    assert (tmp_path / "sub_details.csv").read_text().startswith("id,label,p_female,doubtful")
    # a retrained backbone: its cache changes, and the saved head refuses it
    shutil.rmtree(ws / "models/cnn-small")
    train_backbone(data_dir, TrainConfig("cnn-small", img_size=32, epochs=1, batch_size=16, seed=3), ws,
                   progress=False)
    extract_features(data_dir, "cnn-small", ws, dtype="float32", progress=False)
    with pytest.raises(WorkspaceError, match="changed since this fusion model was trained: checkpoint sha256"):
        predict_submission("fusion", data_dir, tmp_path / "sub2.csv", ws)
    assert not (tmp_path / "sub2.csv").exists()


def test_mismatched_or_broken_caches_are_refused(work):
    _, ws = work
    path = ws / "features" / f"{SOURCES[1]}.h5"
    with h5py.File(path, "r+") as f:
        ids = f["train/ids"][()]
        ids[0] = b"999999"
        del f["train/ids"]
        f.create_dataset("train/ids", data=ids, dtype=h5py.string_dtype("utf-8"))
    fc.seal(path)  # a sealed file whose content contradicts itself
    with pytest.raises(FeatureMismatchError, match="train rows differ between sources: id 100000 is in cnn-small"):
        load_sources(ws, SOURCES)
    with h5py.File(path, "r+") as f:
        ids[0] = b"100000"
        del f["train/ids"]
        f.create_dataset("train/ids", data=ids, dtype=h5py.string_dtype("utf-8"))
        f["train/features"][5, 0] = np.nan
    fc.seal(path)  # a sealed file whose content contradicts itself
    first_ids = [i.decode() for i in ids]
    with pytest.raises(ValueError, match=f"source {SOURCES[1]}: non-finite .* row id {first_ids[5]}"):
        load_sources(ws, SOURCES)


def test_rows_in_another_order_are_aligned(work):
    _, ws = work
    path = ws / "features" / f"{SOURCES[1]}.h5"
    before = load_sources(ws, SOURCES).source(SOURCES[1]).train.copy()
    with h5py.File(path, "r+") as f:
        for name in ("ids", "labels", "fold", "features", "filesize"):
            arr = f[f"train/{name}"][()]
            f[f"train/{name}"][...] = arr[::-1]
    fc.seal(path)  # a valid file, its rows in another order
    after = load_sources(ws, SOURCES).source(SOURCES[1]).train
    assert np.array_equal(before, after)


def test_a_saved_model_survives_moving_its_workspace(work, tmp_path):
    data_dir, ws = work
    train_head(ws, HeadTraining(SOURCES, ["logistic"], protocols=("global",)), log=lambda s: None)
    paths = [data_dir / "test" / f"{i}.jpg" for i in ("200000", "200001", "200002")]
    before = FusionClassifier.load(ws / "heads/fusion/model.safetensors").predict_proba(paths)
    moved = shutil.move(str(ws), str(tmp_path / "elsewhere"))
    clf = FusionClassifier.load(f"{moved}/heads/fusion/model.safetensors")
    assert clf.workdir_ == str(tmp_path / "elsewhere") and np.allclose(clf.predict_proba(paths), before)
    copy = shutil.copy(f"{moved}/heads/fusion/model.safetensors", tmp_path / "m.safetensors")
    with pytest.raises(WorkspaceError, match=r"m.safetensors: its workspace .* is gone .*workdir="):
        FusionClassifier.load(copy)
    assert np.allclose(FusionClassifier.load(copy, workdir=moved).predict_proba(paths), before)


def test_a_cascade_decides_confident_images_with_its_cheap_sources_and_runs_the_rest_only_on_the_others(work):
    data_dir, ws = work
    data = load_sources(ws, SOURCES)
    full = FusionClassifier(SOURCES, "logistic", "global", workdir=ws).fit(data)
    cheap = FusionClassifier(["cnn-small"], "logistic", "global", workdir=ws).fit(data.only(["cnn-small"]))
    p_full = cv_global(data, lambda b: LogisticHead(blocks=b))
    clf = FusionClassifier.load(FusionClassifier(SOURCES, "logistic", "global", workdir=ws).fit(data)
                                .fit_cascade(data, p_full, ["cnn-small"], tolerance=0.05).save(ws / "c.safetensors"))
    # the reference: two independently fitted models, composed by the band
    q_cheap, q_full = cheap.predict_proba_cached()[1][:, 1], full.predict_proba_cached()[1][:, 1]
    # the synthetic faces are easy (the fitted band lets all exit): a band holding the middle half of the test rows
    lo, hi = clf.cascade_.band_ = tuple(np.quantile(q_cheap, [0.25, 0.75]))
    ids, det = clf.details_cached()
    early = (q_cheap < lo) | (q_cheap > hi)
    assert 0 < early.sum() < len(ids)
    assert np.allclose(det["p_female"], np.where(early, q_cheap, q_full), atol=1e-6)
    assert np.array_equal(det["stage"], np.where(early, 1, 2))
    assert np.allclose(clf.details_cached(cascade=False)[1]["p_female"], q_full, atol=1e-6)
    assert clf.stage_names() == {0: "unreadable image", 1: "cascade: cnn-small",
                                 2: "logistic [global] on every source"}
    # from images: the frozen source runs only on the images that go on to the full head
    paths = [data_dir / "test" / f"{i}.jpg" for i in ids]
    frozen = clf._sources(256, "cpu")[1]
    seen, compute = [], frozen.compute_spaces
    frozen.compute_spaces = lambda batch, *a: seen.append(len(batch)) or compute(batch, *a)
    d = clf.predict_details(paths)
    assert np.allclose(d["p_female"], det["p_female"], atol=1e-4) and np.array_equal(d["stage"], det["stage"])
    assert seen == [int((~early).sum())]
    frame = clf.predict_frame(paths[:4], cascade=False, faces="whole")  # blobs, not faces: each taken whole
    assert frame["stage"].tolist() == [1] * 4 and seen[-1] == 4
    assert np.allclose(frame["p_female"], q_full[:4], atol=1e-4)
    with pytest.raises(ValueError, match="cascade sources .*nope is not"):
        clf.fit_cascade(data, p_full, ["nope"])


def test_train_head_cascade_reports_out_of_fold_accuracy_exit_share_and_speed(work, tmp_path):
    data_dir, ws = work
    with pytest.raises(ValueError, match="cascade nope: nope is not one of the features"):
        train_head(ws, HeadTraining(SOURCES, ["logistic"], ("global",), cascade=["nope"]), log=lambda s: None)
    report = train_head(ws, HeadTraining(SOURCES, ["logistic", "knn"], ("global",), cascade=["cnn-small"],
                                         cascade_tolerance=0.05, cascade_speed_n=12),
                        log=lambda s: None)
    c = report["cascade"]
    cv = np.load(ws / "heads/fusion/cv_probs.npz")
    y, p = cv["y"], cv[f"cascade: cnn-small ({c['head']}) [global]"]
    assert c["cv_accuracy"] == pytest.approx(((p >= 0.5) == y).mean())
    assert c["cv_accuracy"] >= c["full_cv_accuracy"] - 0.05 - 1e-9 and 0 <= c["exit_share"] <= 1
    assert c["speed"]["images"] == 12 and c["speed"]["cascade_img_per_s"] > 0
    clf = FusionClassifier.load(ws / "heads/fusion/model.safetensors")
    assert clf.cascade_.band_ == tuple(c["band"]) and clf.cascade_.head == c["head"]
    assert f"<span id='cascade-cv'>{c['cv_accuracy']:.4f}</span>" in (ws / "heads/fusion/card.html").read_text()
    out = predict_submission("fusion", data_dir, tmp_path / "sub.csv", ws)
    assert sum(out["stages"].values()) == 12 and "cascade: cnn-small" in out["stages"]
    from genderfusion.cli.predict_command import predict_main

    for flag, cascade in (([], True), (["--no-cascade"], False)):
        predict_main(["--model", "fusion", "--workdir", str(ws), "--images", str(data_dir / "test"), "--out",
                      str(tmp_path / "p.csv"), "--no-progress", "--batch-size", "5", "--faces", "whole", *flag])
        rows = list(csv.DictReader(open(tmp_path / "p.csv")))
        want = clf.predict_proba([r["path"] for r in rows], cascade=cascade)[:, 1]
        assert np.allclose([float(r["p_female"]) for r in rows], want, atol=1e-5), flag
