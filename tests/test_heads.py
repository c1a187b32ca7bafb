import pickle
import warnings

import numpy as np
import pytest
from sklearn.utils.estimator_checks import check_estimator

from genderfusion.heads import BlockScaler, KNNHead, LogisticHead, MajorityVote, MLPHead, WeightedVote

# Votes read each column as a source's logit (its sign is the vote), so scikit-learn's generic accuracy
# check on arbitrary features does not apply to them.
VOTE_SKIPS = {"check_classifiers_train": "votes read columns as logits, not as arbitrary features"}


@pytest.mark.parametrize("est,skips", [(LogisticHead(Cs=(1.0,)), {}), (MLPHead(max_epochs=5), {}),
                                       (KNNHead(), {}), (MajorityVote(), VOTE_SKIPS), (WeightedVote(), VOTE_SKIPS)],
                         ids=lambda x: type(x).__name__ if not isinstance(x, dict) else "")
def test_sklearn_estimator_contract(est, skips):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, on_fail=None, expected_failed_checks=skips)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed


def _blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    narrow = y[:, None] * 1.5 + rng.normal(size=(n, 4))  # informative, 4 wide
    wide = rng.normal(size=(n, 400))  # pure noise, 400 wide
    return np.hstack([narrow, wide]), y


@pytest.mark.parametrize("Head", [LogisticHead, MLPHead, KNNHead])
def test_heads_learn_and_roundtrip(Head):
    X, y = _blobs()
    head = Head(blocks=[4, 400]).fit(X[:450], y[:450])
    acc = (head.predict(X[450:]) == y[450:]).mean()
    assert acc > 0.8, acc
    p = head.predict_proba(X[450:])
    again = pickle.loads(pickle.dumps(head))
    assert np.allclose(again.predict_proba(X[450:]), p)


def test_block_balancing_keeps_a_narrow_source_from_drowning():
    X, y = _blobs(seed=1)
    naive = KNNHead(blocks=None, balance=False).fit(X[:450], y[:450])
    balanced = KNNHead(blocks=[4, 400]).fit(X[:450], y[:450])
    acc = lambda h: (h.predict(X[450:]) == y[450:]).mean()  # noqa: E731
    assert acc(balanced) > acc(naive) + 0.1


def test_block_scaler_pca_and_widths():
    X, _ = _blobs()
    Z = BlockScaler([4, 400], pca=16).fit(X).transform(X)
    assert Z.shape == (600, 20)
    assert np.isclose(Z[:, :4].var(0).sum(), Z[:, 4:].var(0).sum(), rtol=0.05)
    with pytest.raises(ValueError, match="sum to 10"):
        BlockScaler([4, 6]).fit(X)


def test_votes():
    logits = np.array([[2.0, -1.0, 0.5], [-1.0, -2.0, 3.0], [1.0, 1.0, -5.0], [-0.1, -0.2, -0.3]])
    y = np.array([1, 0, 1, 0])
    assert MajorityVote().fit(logits, y).predict(logits).tolist() == [1, 0, 1, 0]
    # source 0 is always right, sources 1 and 2 are right half the time: weighted vote follows source 0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    good = np.where(y == 1, 1.0, -1.0)
    noisy = rng.normal(size=(200, 2))
    X = np.column_stack([good * 0.9 + 0.05, noisy])
    wv = WeightedVote().fit(X, y)
    assert wv.weights_[0] > 3 * wv.weights_[1:].max()
    assert (wv.predict(X) == y).mean() > (MajorityVote().fit(X, y).predict(X) == y).mean()


def test_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="only one class"):
        LogisticHead().fit(np.zeros((10, 3)), np.ones(10))


def test_knn_ivf_index_above_threshold():
    X, y = _blobs(n=400)
    head = KNNHead(ivf_threshold=100, blocks=[4, 400]).fit(X[:300], y[:300])
    import faiss

    assert isinstance(head.index_, faiss.IndexIVFFlat)
    assert (head.predict(X[300:]) == y[300:]).mean() > 0.75


def test_mlp_leaves_global_torch_state_as_found():
    import torch

    X, y = np.random.default_rng(0).normal(size=(80, 4)), np.arange(80) % 2
    torch.manual_seed(123)
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    expected_draw = torch.rand(3)
    torch.set_rng_state(state)
    a = MLPHead(max_epochs=3, random_state=7).fit(X, y)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's random stream was not consumed or reseeded
    torch.manual_seed(999)
    b = MLPHead(max_epochs=3, random_state=7).fit(X, y)  # the head's own seed, whatever the global one
    assert np.allclose(a.predict_proba(X), b.predict_proba(X))
