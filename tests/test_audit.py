"""audit-labels end to end on a synthetic workspace with a planted duplicate, --exclude, duplicate-aware folds,
the nested cleaning CV and the second stage in train-head and predict."""
import csv
import json
import shutil

import numpy as np
import pytest

from genderfusion.extract.cache.api import extract_features
from genderfusion.extract.data.folds import duplicate_groups, make_folds
from genderfusion.extract.errors import DataError, WorkspaceError
from genderfusion.fusion.audit.labels import audit_labels
from genderfusion.fusion.model.classifier import FusionClassifier, head_factory
from genderfusion.fusion.audit.cleaning import cleaning_cv
from genderfusion.extract.data.exclusion import exclusion_mask, read_ids
from genderfusion.fusion.model.features import load_sources
from genderfusion.fusion.predict.submission import predict_submission
from genderfusion.fusion.model.protocol import cv_global
from genderfusion.fusion.training import train_head as train_head_module
from genderfusion.fusion.training.train_head import HeadTraining, train_head
from genderfusion.heads import LogisticHead
from genderfusion.heads.second_stage import in_band

FROZEN = "timm:mobilenetv3_small_050"
SOURCE = f"{FROZEN}-frozen".replace(":", "_")


def _labels(data):
    return {r["id"]: int(r["label"]) for r in csv.DictReader(open(data / "train.csv"))}


@pytest.fixture(scope="module")
def audited(synth_master, tmp_path_factory):
    """Synthetic data in which train image B is a copy of image A under the other label; a frozen source, a
    trained head, and the audit."""
    data = shutil.copytree(synth_master, tmp_path_factory.mktemp("audit") / "comp")
    labels = _labels(data)
    a = next(i for i, y in labels.items() if y == 0)
    b = [i for i, y in labels.items() if y == 1][-1]
    shutil.copy(data / "train" / f"{a}.jpg", data / "train" / f"{b}.jpg")
    ws = data.parent / "ws"
    extract_features(data, FROZEN, ws, frozen=True, img_size=32, pool="avg", dtype="float32", progress=False)
    train_head(ws, HeadTraining([SOURCE], ["logistic"], ("global",)), log=lambda s: None)
    counts = audit_labels(ws, data, descriptor=SOURCE, log=lambda s: None)
    return data, ws, a, b, counts


def test_audit_finds_the_planted_conflicting_pair_and_nothing_else(audited):
    data, ws, a, b, counts = audited
    assert counts["exact_groups"] == 1 and counts["conflicting_exact_groups"] == 1
    dup = list(csv.DictReader(open(ws / "audit/duplicates.csv")))
    exact = [r for r in dup if "exact" in r["kind"]]
    assert len(exact) == 1 and set(exact[0]["ids"].split()) >= {a, b} and exact[0]["conflicting"] == "1"
    sus = {r["id"]: r for r in csv.DictReader(open(ws / "audit/suspects.csv"))}
    for i, twin in ((a, b), (b, a)):
        assert "exact duplicate with another label" in sus[i]["reasons"] and twin in sus[i]["duplicates"].split()
    scores = [float(r["score"]) for r in sus.values()]
    assert scores == sorted(scores, reverse=True)
    oof = np.load(ws / "heads/fusion/cv_probs.npz")
    p = dict(zip(oof["ids"], oof["logistic [global]"]))
    for i, r in sus.items():  # P(label) is the out-of-fold probability of the given label
        assert float(r["p_label"]) == pytest.approx(p[i] if r["label"] == "1" else 1 - p[i], abs=1e-4)
    assert (ws / "audit/suspects.png").stat().st_size > 1000 and "Label audit" in (ws / "audit/audit.md").read_text()


def test_audit_refuses_missing_inputs(audited, tmp_path):
    data, ws, *_ = audited
    with pytest.raises(WorkspaceError, match="no trained fusion model"):
        audit_labels(ws, data, model="nope", descriptor=SOURCE, log=lambda s: None)
    with pytest.raises(WorkspaceError, match="no face descriptor cached"):
        audit_labels(ws, data, log=lambda s: None)
    more = shutil.copytree(data, tmp_path / "more")
    with open(more / "train.csv", "a") as fh:
        fh.write("999999,1\n")
    shutil.copy(more / "train" / "100000.jpg", more / "train" / "999999.jpg")
    with pytest.raises(WorkspaceError, match="more: its training ids, labels or image sizes are not the ones"):
        audit_labels(ws, more, descriptor=SOURCE, log=lambda s: None)


def test_exclude_file_checks(tmp_path):
    ids, y = ["1", "2", "3", "4"], np.array([0, 0, 1, 1])
    (tmp_path / "s.csv").write_text("id,label,score\n3,1,0.9\n1,0,0.5\n")
    (tmp_path / "s.txt").write_text("id\n3\n\n1\n")
    assert read_ids(tmp_path / "s.csv") == read_ids(tmp_path / "s.txt") == ["3", "1"]
    assert exclusion_mask(ids, y, ["3", "1"], "f").tolist() == [True, False, True, False]
    with pytest.raises(DataError, match=r"not training rows, e.g. \['9'\]"):
        exclusion_mask(ids, y, ["3", "9"], "f")
    with pytest.raises(DataError, match="every training row of class 1"):
        exclusion_mask(ids, y, ["3", "4"], "f")
    (tmp_path / "bad.csv").write_text("name,score\n3,1\n")
    with pytest.raises(DataError, match="`id` column"):
        read_ids(tmp_path / "bad.csv")


def test_excluded_rows_are_evaluated_but_never_trained_on(audited, tmp_path):
    data, ws, *_ = audited
    fd = load_sources(ws, [SOURCE])
    drop = fd.ids[:7].astype(str).tolist()
    (tmp_path / "x.csv").write_text("id\n" + "\n".join(drop) + "\n")
    fd.excluded = exclusion_mask(fd.ids, fd.y, drop, "x")
    probs = cv_global(fd, head_factory("logistic"))
    X = fd.sources[0].train.astype(np.float32)
    for k in range(fd.k):  # reference: a head fitted on the other folds without the excluded rows
        tr = (fd.fold != k) & ~fd.excluded
        ref = LogisticHead(blocks=[X.shape[1]]).fit(X[tr], fd.y[tr]).predict_proba(X[fd.fold == k])[:, 1]
        assert np.allclose(probs[fd.fold == k], ref, atol=1e-6)
    report = train_head(ws, HeadTraining([SOURCE], ["logistic"], ("global",), "excl", exclude=tmp_path / "x.csv"),
                        log=lambda s: None)
    assert report["excluded_from_training"] == 7 and sum(map(sum, report["confusion"])) == len(fd.y)
    cv = np.load(ws / "heads/excl/cv_probs.npz")["logistic [global]"]
    assert np.allclose(cv, probs, atol=1e-6)


def test_nested_cleaning_without_a_cutoff_is_plain_cv(audited):
    _, ws, *_ = audited
    fd = load_sources(ws, [SOURCE])
    out = cleaning_cv(fd, head_factory("logistic"), [0.0, 0.1], log=lambda s: None)
    assert np.allclose(out[0.0], cv_global(fd, head_factory("logistic")), atol=1e-6)
    assert not np.allclose(out[0.1], out[0.0])


def test_duplicate_aware_folds(audited):
    data, ws, a, b, _ = audited
    ids = list(_labels(data))
    groups = duplicate_groups(ws / "audit/duplicates.csv", ids)
    assert groups[ids.index(a)] == groups[ids.index(b)]
    y = np.array(list(_labels(data).values()))
    folds = make_folds(y, 3, 0, None, groups)
    assert folds[ids.index(a)] == folds[ids.index(b)] and np.bincount(folds).min() >= 19
    with pytest.raises(WorkspaceError, match="not training rows"):
        duplicate_groups(ws / "audit/duplicates.csv", ids[:5])


def _second_stage_cv_that(helps: bool):
    """A stand-in for the measured second stage: inside the band, every row right (helps) or every row wrong."""
    def cv(X, blocks, y, fold, p_first, band, trainable=None):
        p = np.asarray(p_first, np.float64).copy()
        m = in_band(p, band)
        p[m] = np.where(y[m] == (1 if helps else 0), 0.9, 0.1)
        return p
    return cv


def test_second_stage_is_kept_only_when_it_raises_the_out_of_fold_accuracy(audited, monkeypatch):
    _, ws, *_ = audited
    for helps in (True, False):
        monkeypatch.setattr(train_head_module, "second_stage_cv", _second_stage_cv_that(helps))
        report = train_head(ws, HeadTraining([SOURCE], ["logistic"], ("global",), f"s2-{helps}", band=(0.3, 0.7),
                                             second_stage=True),
                            log=lambda s: None)
        s2 = report["second_stage"]
        assert s2["rows_in_band"] > 0 and s2["band_accuracy_first"] < 1.0
        assert s2["kept"] is helps and (s2["accuracy_second"] > s2["accuracy_first"]) is helps
        assert report["best_method"] == ("logistic + second stage [global]" if helps else "logistic [global]")
        assert any(r["method"] == "logistic + second stage" for r in report["rows"])  # reported either way
        assert (FusionClassifier.load(ws / f"heads/s2-{helps}/model.safetensors").second_stage_ is not None) is helps


def test_second_stage_is_saved_and_used_by_predict(audited, tmp_path, monkeypatch):
    data, ws, *_ = audited
    monkeypatch.setattr(train_head_module, "second_stage_cv", _second_stage_cv_that(True))
    report = train_head(ws, HeadTraining([SOURCE], ["logistic"], ("global",), "s2", band=(0.3, 0.7), second_stage=True),
                        log=lambda s: None)
    s2 = report["second_stage"]
    assert s2["rows_in_band"] > 0 and {"band_accuracy_first", "band_accuracy_second"} <= set(s2)
    assert (ws / "heads/s2/coverage.png").stat().st_size > 1000
    clf = FusionClassifier.load(ws / "heads/s2/model.safetensors")
    ids, det = clf.details_cached()
    inside = (det["p_first_stage"] >= 0.3) & (det["p_first_stage"] <= 0.7)
    assert np.array_equal(det["stage"] == 2, inside) and np.array_equal(det["p_female"][~inside],
                                                                        det["p_first_stage"][~inside])
    paths = [data / "test" / f"{i}.jpg" for i in ids[:6]]
    d = clf.predict_details(paths)
    assert np.allclose(d["p_female"], det["p_female"][:6], atol=1e-4) and np.array_equal(d["stage"], det["stage"][:6])
    out = predict_submission("s2", data, tmp_path / "sub.csv", ws)
    rows = list(csv.DictReader(open(tmp_path / "sub_details.csv")))
    assert out["stages"] == {"logistic [global] on every source": int((~inside).sum()),
                             "second stage in the band [0.3, 0.7]": int(inside.sum())}
    assert {r["stage"] for r in rows} <= {"1", "2"}


def test_train_backbone_exclude_never_trains_on_those_rows(synth, tmp_path):
    from genderfusion.extract.models.training import TrainConfig, train_backbone

    ids = list(_labels(synth))
    drop = ids[:9]
    (tmp_path / "x.txt").write_text("\n".join(drop) + "\n")
    ws = tmp_path / "ws"
    cfg = TrainConfig("cnn-small", img_size=32, epochs=1, batch_size=16)
    summary = train_backbone(synth, cfg, ws, k=2, progress=False, exclude=tmp_path / "x.txt")
    assert summary["excluded_from_training"] == 9
    fold_of = dict(r.split(",") for r in (ws / "folds.csv").read_text().splitlines()[2:])
    for k in range(2):
        cfg_k = json.loads((ws / "models/cnn-small" / f"fold{k}.config.json").read_text())
        others = [i for i in ids if fold_of[i] != str(k)]
        assert cfg_k["n_fit"] + cfg_k["n_val"] == len(others) - len(set(drop) & set(others))
    oof = [r for k in range(2) for r in csv.DictReader(open(ws / "models/cnn-small" / f"fold{k}.oof.csv"))]
    assert {r["id"] for r in oof} >= set(drop)  # excluded rows are still predicted out of fold
    with pytest.raises(DataError, match="not training rows"):
        (tmp_path / "y.txt").write_text("nope\n")
        train_backbone(synth, cfg, ws, k=2, progress=False, exclude=tmp_path / "y.txt")
