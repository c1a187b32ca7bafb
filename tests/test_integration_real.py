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
    from extract.finetune import train_backbone
    from extract.train import TrainConfig

    ws = tmp_path / "ws"
    s = train_backbone(real_subset, TrainConfig("cnn-small", img_size=32, epochs=2, batch_size=32), ws, k=2,
                       progress=False)
    assert 0.4 <= s["oof_accuracy"] <= 1.0 and sum(r["n_holdout"] for r in s["folds"].values()) == 200
