"""The whole pipeline on a small real subset of ../shared/data/faces (skipped when it is absent)."""
import csv
import os

import pytest

from tests.conftest import REAL_FACES

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (REAL_FACES / "train.csv").exists(), reason=f"{REAL_FACES} not present")]


@pytest.fixture(scope="module")
def real_subset(tmp_path_factory):
    """200 training and 40 test faces, linked from the real folder."""
    out = tmp_path_factory.mktemp("faces")
    for split, n in (("train", 200), ("test", 40)):
        (out / split).mkdir()
        with open(REAL_FACES / f"{split}.csv") as fh:
            rows = list(csv.DictReader(fh))[:n]
        with open(out / f"{split}.csv", "w") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        for r in rows:
            os.symlink(REAL_FACES / split / f"{r['id']}.jpg", out / split / f"{r['id']}.jpg")
    keep = {r["id"] for r in csv.DictReader(open(out / "train.csv"))}
    meta = [r for r in csv.DictReader(open(REAL_FACES / "train_meta.csv")) if r["id"] in keep]
    with open(out / "train_meta.csv", "w") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "age", "race"])
        w.writeheader()
        w.writerows(meta)
    return out


def test_pipeline_on_real_faces(real_subset, tmp_path):
    """train-backbone -> extract (fine-tuned and frozen) -> train-head -> predict, on 240 real faces."""
    pytest.importorskip("onnxruntime")
    from genderfusion.extract.cache.api import extract_features
    from genderfusion.extract.models.training import train_backbone
    from genderfusion.extract.models.training import TrainConfig
    from genderfusion.fusion.predict.submission import predict_submission
    from genderfusion.fusion.training.train_head import HeadTraining, train_head

    ws = tmp_path / "ws"
    s = train_backbone(real_subset, TrainConfig("cnn-small", img_size=32, epochs=2, batch_size=32), ws, k=2,
                       progress=False)
    assert 0.4 <= s["oof_accuracy"] <= 1.0 and sum(r["n_holdout"] for r in s["folds"].values()) == 200
    assert extract_features(real_subset, "cnn-small", ws, progress=False).computed_rows == 200 + 2 * 40
    assert extract_features(real_subset, "gender-cnn", ws, frozen=True, align=False,
                            progress=False).computed_rows == 240
    # the face ResNet fine-tuned above its cut on cached trunk activations, extracted as a fine-tuned source
    # 18 steps: the default weight average (0.998, 500 steps) would keep the new layer near its initialisation
    f = train_backbone(real_subset, TrainConfig("face-resnet", epochs=3, batch_size=16, ema=0.8), ws, progress=False)
    assert f["trunk_cache"]["bytes"] == 200 * 2 * 128 * 8 * 8 * 2 and f["oof_accuracy"] > 0.7
    assert extract_features(real_subset, "face-resnet", ws, progress=False).computed_rows == 200 + 2 * 40
    report = train_head(ws, HeadTraining(["cnn-small", "gender-cnn-frozen-noalign-flip", "face-resnet-flip"],
                                         ["logistic"]),
                        log=lambda m: None)
    acc = {(r["method"], r["protocol"]): r["accuracy"] for r in report["rows"]}
    # the pretrained gender network is far better than chance on real faces, and stacking keeps most of it
    assert acc[("gender-cnn-frozen-noalign-flip", "own classifier")] > 0.8
    assert report["best_cv_accuracy"] > 0.75
    out = predict_submission("fusion", real_subset, tmp_path / "sub.csv", ws)
    assert out["rows"] == 40 and len((tmp_path / "sub.csv").read_text().splitlines()) == 41
