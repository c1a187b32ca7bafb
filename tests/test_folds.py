import numpy as np
import pytest

from genderfusion.extract.data.dataset import CompetitionData
from genderfusion.extract.errors import WorkspaceError
from genderfusion.extract.data.folds import ensure_folds, make_folds
from genderfusion.extract.data.groups import age_bucket
from genderfusion.extract.data.workspace import Workspace


def test_folds_are_deterministic_and_stratified():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    ages = rng.integers(0, 90, 1000)
    a, b = make_folds(y, 5, seed=3, ages=ages), make_folds(y, 5, seed=3, ages=ages)
    assert (a == b).all()
    assert not (a == make_folds(y, 5, seed=4, ages=ages)).all()
    assert np.bincount(a).min() >= 199 and np.bincount(a).max() <= 201
    for label in (0, 1):
        for bucket in range(6):
            counts = np.bincount(a[(y == label) & (age_bucket(ages) == bucket)], minlength=5)
            assert counts.max() - counts.min() <= 1, (label, bucket, counts)


def test_age_buckets():
    assert age_bucket(np.array([0, 2, 3, 9, 10, 19, 20, 39, 40, 59, 60, 116, -1])).tolist() == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, -1]


def test_saved_folds_are_reused_and_other_k_refused(synth, tmp_path):
    data, ws = CompetitionData.load(synth), Workspace(tmp_path / "ws")
    f1 = ensure_folds(ws, data, 3, 0)
    assert (ensure_folds(ws, data).fold == f1.fold).all()
    with pytest.raises(WorkspaceError, match="k=3 seed=0.*new_folds=True"):
        ensure_folds(ws, data, 4, 0)
    f2 = ensure_folds(ws, data, 4, 0, new=True)
    assert f2.k == 4 and f2.fingerprint != f1.fingerprint


def test_workspace_refuses_other_dataset(synth, tmp_path):
    from genderfusion.extract.data.synthetic import make_synthetic

    ws = Workspace(tmp_path / "ws")
    ws.bind(CompetitionData.load(synth))
    other = make_synthetic(tmp_path / "other", n_train=20, n_test=4, size=16, seed=9)
    with pytest.raises(WorkspaceError, match="another training set.*fingerprint"):
        ws.bind(CompetitionData.load(other))
    lines = (synth / "train.csv").read_text().splitlines()
    i, y = lines[1].split(",")
    (synth / "train.csv").write_text("\n".join([lines[0], f"{i},{1 - int(y)}", *lines[2:]]) + "\n")
    assert ws.bind(CompetitionData.load(synth)) == ws.dataset_fingerprint()  # a corrected label is accepted
