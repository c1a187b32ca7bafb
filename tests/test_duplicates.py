"""Duplicate finding: pixel digests, nearest neighbours, the data-read threshold, groups; the second stage."""
import numpy as np
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from genderfusion.extract.data.pixel_hashes import pixel_digest, pixel_hashes
from genderfusion.extract.errors import BadImageError
from genderfusion.fusion.audit.duplicates import exact_pairs, find_duplicates, group_ids, nearest, valley_threshold
from genderfusion.heads.second_stage import KnnSecondStage


def test_pixel_digest_sees_pixels_not_file_bytes(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png", compress_level=1)
    Image.fromarray(a).save(tmp_path / "b.png", compress_level=9)
    b = a.copy()
    b[0, 0, 0] ^= 1
    Image.fromarray(b).save(tmp_path / "c.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    assert pixel_digest(tmp_path / "a.png") == pixel_digest(tmp_path / "b.png") != pixel_digest(tmp_path / "c.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="bad.jpg"):
        pixel_hashes([tmp_path / "a.png", tmp_path / "bad.jpg"], workers=1, progress=False)
    digests, bad = pixel_hashes([tmp_path / "a.png", tmp_path / "bad.jpg"], skip_bad=True, workers=1, progress=False)
    assert bad == [1] and not digests[1].any()


def test_parallel_hashing_equals_serial(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for n in range(140):  # more than one chunk of 64 for each of 2 workers
        p = tmp_path / f"{n}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    paths[77] = paths[3]
    serial, _ = pixel_hashes(paths, workers=1, progress=False)
    parallel, _ = pixel_hashes(paths, workers=2, progress=False)
    assert np.array_equal(serial, parallel)
    assert exact_pairs(parallel).tolist() == [[3, 77]]


def test_nearest_leaves_the_row_itself_out():
    X = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    d, nn = nearest(X, k=3)
    full = np.linalg.norm(X[:, None] - X[None], axis=2)
    np.fill_diagonal(full, np.inf)
    assert (nn != np.arange(50)[:, None]).all()
    assert np.allclose(d, np.sort(full, axis=1)[:, :3], atol=1e-4)


def test_valley_threshold_separates_two_modes_and_finds_none_in_one():
    rng = np.random.default_rng(3)
    two = np.concatenate([rng.normal(0.10, 0.02, 400), rng.normal(0.45, 0.05, 8000)])
    t = valley_threshold(two)
    assert 0.14 < t < 0.32
    assert valley_threshold(rng.normal(0.45, 0.05, 8000)) == 0.0


def test_groups_are_the_connected_components():
    rng = np.random.default_rng(4)
    pairs = rng.integers(0, 40, (25, 2))
    g = group_ids(40, pairs)
    n, ref = connected_components(coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(40, 40)),
                                  directed=False)
    assert len(set(g.tolist())) == n
    for a in range(40):
        for b in range(40):
            assert (g[a] == g[b]) == (ref[a] == ref[b])


def test_planted_exact_and_near_duplicates_are_found():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    digests = rng.integers(0, 256, (300, 32)).astype(np.uint8)
    digests[10] = digests[20]  # exact: same pixels, same descriptor
    X[10] = X[20]
    X[30] = X[40] + 0.01  # near
    dups = find_duplicates(digests, X, threshold=0.1)
    assert dups.exact.tolist() == [[10, 20]] and dups.near.tolist() == [[30, 40]]
    assert sorted(map(sorted, (g.tolist() for g in dups.groups()))) == [[10, 20], [30, 40]]


def brute_vote(Xtr, ytr, q, k):
    d = np.linalg.norm(Xtr - q, axis=1)
    nn = np.argsort(d, kind="stable")[:k]
    w = 1 / (d[nn] + 1e-3)
    return (w * ytr[nn]).sum() / w.sum()


def test_second_stage_votes_inside_the_band_only():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] > 0).astype(int)
    fold = np.arange(200) % 4
    p_first = np.clip(0.5 + 0.3 * rng.normal(size=200), 0, 1)
    stage = KnnSecondStage((0.4, 0.6), ks=(3, 7)).fit(X, y, p_first, fold)
    assert stage.k_ in (3, 7) and stage.n_selection_rows_ == int(((p_first >= 0.4) & (p_first <= 0.6)).sum())
    Xq = rng.normal(size=(30, 5))
    pq = np.linspace(0, 1, 30)
    out = stage.predict_proba(Xq, pq)
    inside = (pq >= 0.4) & (pq <= 0.6)
    assert np.array_equal(out[~inside], pq[~inside])
    Z, Zq = stage.scaler_.transform(X), stage.scaler_.transform(Xq)
    ref = np.array([brute_vote(Z, y, z, stage.k_) for z in Zq[inside]])
    assert np.allclose(out[inside], ref, atol=1e-5)
