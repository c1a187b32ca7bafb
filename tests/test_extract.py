import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from genderfusion.extract.cache import format as fc
from genderfusion.extract.models.backbone import create
from genderfusion.extract.data.dataset import CompetitionData
from genderfusion.files.digests import sha256_file
from genderfusion.extract.errors import WorkspaceError
from genderfusion.extract.cache.api import extract_features, merge_features
from genderfusion.extract.models.training import train_backbone
from genderfusion.extract.data.image_cache import cached_images
from genderfusion.extract.models.inference import infer
from genderfusion.extract.models.training import TrainConfig
from genderfusion.extract.data.workspace import Workspace

CFG = TrainConfig("cnn-small", img_size=32, epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def trained(synth_master, tmp_path_factory):
    """A workspace with 2-fold cnn-small checkpoints on the synthetic data."""
    ws = tmp_path_factory.mktemp("trained") / "ws"
    train_backbone(synth_master, CFG, ws, k=2, progress=False)
    return synth_master, ws


@pytest.fixture
def work(trained, tmp_path):
    """A private copy of the trained workspace and the data."""
    data, ws = trained
    return Path_copy(data, tmp_path / "comp"), Path_copy(ws, tmp_path / "ws")


def Path_copy(src, dst):
    return shutil.copytree(src, dst)


def _fold_model(ws, f):
    m = create("cnn-small", 32, weights="random")
    m.load_state_dict(torch.load(ws / f"models/cnn-small/fold{f}.pt", weights_only=False)["state_dict"])
    return m.eval()


def test_train_features_come_from_the_fold_model_that_held_the_row_out(work):
    data, ws = work
    out = extract_features(data, "cnn-small", ws, dtype="float32", progress=False)
    assert out.status == "computed"
    fs = fc.load(out.path)
    images, _ = cached_images(Workspace(ws), CompetitionData.load(data), "train", 32, progress=False)
    models = [_fold_model(ws, f) for f in (0, 1)]
    for row in (0, 1, 2, 3, 10, 20):
        own = fs.train.fold[row]
        logit_own, feat_own = infer(models[own], images, np.array([row]), pool="flatten")
        logit_other, feat_other = infer(models[1 - own], images, np.array([row]), pool="flatten")
        assert np.allclose(fs.train.features[row], feat_own[0], atol=1e-5)
        assert np.isclose(fs.train.logits[row], logit_own[0], atol=1e-5)
        assert not np.allclose(fs.train.features[row], feat_other[0], atol=1e-3)
    assert fs.test.features.shape[:2] == (2, 12)  # one vector per fold model
    test_images, _ = cached_images(Workspace(ws), CompetitionData.load(data), "test", 32, progress=False)
    _, t1 = infer(models[1], test_images, np.arange(12), pool="flatten")
    assert np.allclose(fs.test.features[1], t1, atol=1e-5)
    assert fs.attrs["folds_fingerprint"] and len(fs.attrs["checkpoint_sha256"]) == 2


def test_cache_hit_decodes_nothing(work, monkeypatch):
    data, ws = work
    extract_features(data, "cnn-small", ws, progress=False)
    import genderfusion.extract.data.image_cache as ic

    monkeypatch.setattr(ic, "decode_many", lambda *a, **k: pytest.fail("decoded an image on a cache hit"))
    (ws / "cache" / "images" / "train_32.npy").unlink()  # even without the image cache
    out = extract_features(data, "cnn-small", ws, progress=False)
    assert out.status == "hit" and out.computed_rows == 0


def test_cache_hit_imports_no_torch(work):
    """A hit is decided from the recorded recipe and checkpoint hashes, in a process that never imports torch."""
    data, ws = work
    extract_features(data, "cnn-small", ws, progress=False)
    code = ("import sys; from genderfusion.extract.cache.api import extract_features; "
            f"out = extract_features({str(data)!r}, 'cnn-small', {str(ws)!r}, progress=False); "
            "print(out.status, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["hit", "False"]


def test_invalidation_rules(work):
    data, ws = work
    extract_features(data, "cnn-small", ws, progress=False)
    out = extract_features(data, "cnn-small", ws, pool="avg", progress=False)
    assert out.status == "computed" and "pooling" in out.reason
    out = extract_features(data, "cnn-small", ws, pool="avg", progress=False, dtype="float32")
    assert out.status == "computed" and "dtype" in out.reason
    # a retrained fold checkpoint changes its sha256
    shutil.rmtree(ws / "models/cnn-small")
    train_backbone(data, TrainConfig("cnn-small", img_size=32, epochs=1, batch_size=16, seed=5), ws, progress=False)
    out = extract_features(data, "cnn-small", ws, pool="avg", progress=False, dtype="float32")
    assert out.status == "computed" and "checkpoint_sha256" in out.reason
    assert extract_features(data, "cnn-small", ws, pool="avg", dtype="float32", force=True,
                            progress=False).reason == "force=True"


def test_new_test_ids_are_appended(work):
    data, ws = work
    first = extract_features(data, "cnn-small", ws, dtype="float32", progress=False)
    before = fc.load(first.path)
    shutil.copy(data / "test/200000.jpg", data / "test/299999.jpg")
    with open(data / "test.csv", "a") as fh:
        fh.write("299999\n")
    out = extract_features(data, "cnn-small", ws, dtype="float32", progress=False)
    assert out.status == "appended" and out.computed_rows == 2  # one new row, in each of 2 fold spaces
    after = fc.load(out.path)
    assert np.array_equal(after.train.features, before.train.features)
    assert np.array_equal(after.test.features[:, :12], before.test.features)
    assert np.allclose(after.test.features[:, 12], before.test.features[:, 0], atol=1e-4)  # same image


def test_checkpoints_of_other_folds_are_refused(work):
    data, ws = work
    (ws / "folds.csv").write_text((ws / "folds.csv").read_text().replace(",0\n", ",9\n", 1))
    with pytest.raises(WorkspaceError, match="another fold assignment.*fingerprint"):
        extract_features(data, "cnn-small", ws, progress=False)


def test_missing_checkpoints_name_the_training_command(work):
    data, ws = work
    with pytest.raises(WorkspaceError, match="cnn-deep has no finished checkpoint .*train-backbone"):
        extract_features(data, "cnn-deep", ws, progress=False)


def test_shards_merge_to_the_single_process_cache(work):
    data, ws = work
    whole = fc.load(extract_features(data, "cnn-small", ws, dtype="float32", progress=False).path)
    for i in range(3):
        extract_features(data, "cnn-small", ws, dtype="float32", shard=f"{i}/3", progress=False)
    merged_path = ws / "features/cnn-small.h5"
    merged_path.unlink()
    merged = fc.load(merge_features(ws, "cnn-small"))
    assert list(merged.train.ids) == list(whole.train.ids) and list(merged.test.ids) == list(whole.test.ids)
    assert np.allclose(merged.train.features, whole.train.features, atol=1e-5)
    assert np.allclose(merged.test.features, whole.test.features, atol=1e-5)
    assert np.allclose(merged.test.logits, whole.test.logits, atol=1e-5)
    assert (merged.train.fold == whole.train.fold).all()
    assert extract_features(data, "cnn-small", ws, dtype="float32", progress=False).status == "hit"


def test_killed_run_leaves_old_cache_and_resumes(work, monkeypatch):
    data, ws = work
    good = extract_features(data, "cnn-small", ws, progress=False)
    reference = fc.load(extract_features(data, "cnn-small", ws, pool="max", dtype="float32", progress=False).path)
    good = extract_features(data, "cnn-small", ws, progress=False)  # back to the flatten cache
    from genderfusion.extract.sources.torch_source import TorchSource

    real = TorchSource.compute_spaces
    calls, die = [], [True]

    def dying(self, batch, spaces):
        calls.append((list(spaces), len(batch)))
        if len(calls) == 4 and die[0]:
            raise KeyboardInterrupt  # killed in the second part of fold space 0's training rows
        return real(self, batch, spaces)

    monkeypatch.setattr(TorchSource, "compute_spaces", dying)
    import genderfusion.extract.cache.writer as ex

    monkeypatch.setattr(ex, "PART_ROWS", 8)  # checkpoint every 8 rows: 30 rows a fold -> 4 parts, 12 test rows -> 2
    with pytest.raises(KeyboardInterrupt):
        extract_features(data, "cnn-small", ws, pool="max", dtype="float32", progress=False)
    assert calls[:2] == [([0, 1], 8), ([0, 1], 4)]  # a test row in both fold spaces at once
    assert fc.load(good.path).attrs["pooling"] == "flatten"  # the old valid cache is untouched
    partial = good.path.with_name(good.path.name + ".parts")
    assert sorted(p.name for p in partial.glob("*.npz")) == ["test-0.npz", "test-1.npz", "train-0-0.npz"]
    calls.clear()
    die[0] = False
    out = extract_features(data, "cnn-small", ws, pool="max", dtype="float32", progress=False)
    # the parts already written are not computed again; 30 train rows a fold
    assert calls == [([0], 8), ([0], 8), ([0], 6), ([1], 8), ([1], 8), ([1], 8), ([1], 6)]
    assert not partial.exists()
    resumed = fc.load(out.path)
    assert np.allclose(resumed.train.features, reference.train.features)
    assert np.allclose(resumed.test.features, reference.test.features)


def test_truncated_or_contradictory_cache_is_detected(work):
    data, ws = work
    path = extract_features(data, "cnn-small", ws, progress=False).path
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(fc.CacheError, match=str(path)):
        fc.load(path)
    out = extract_features(data, "cnn-small", ws, progress=False)
    assert out.status == "computed" and "damaged feature cache" in out.reason
    with h5py.File(path, "r+") as f:
        f.attrs["feature_dim"] = 7
    fc.seal(path)  # a sealed file whose content contradicts itself
    with pytest.raises(fc.CacheError, match=r"train/features has shape .* attributes imply"):
        fc.load(path)


def test_frozen_source_has_one_space(work):
    data, ws = work
    out = extract_features(data, "timm:mobilenetv3_small_050", ws, frozen=True, img_size=32, pool="avg",
                           progress=False)
    fs = fc.load(out.path)
    assert out.path.name == "timm:mobilenetv3_small_050-frozen.h5".replace(":", "_")
    assert fs.kind == "frozen" and fs.test.features.shape[0] == 1 and fs.train.logits is None
    assert fs.attrs["checkpoint_sha256"] == ["random-init-seed0"]
    again = extract_features(data, "timm:mobilenetv3_small_050", ws, frozen=True, img_size=32, pool="avg",
                             weights="random", progress=False)
    assert again.status == "computed" and "spec" in again.reason  # weights='random' is another recipe
    assert extract_features(data, "timm:mobilenetv3_small_050", ws, frozen=True, img_size=32, pool="avg",
                            weights="random", progress=False).status == "hit"


def test_skip_bad_records_the_image(work):
    data, ws = work
    (data / "test/200003.jpg").write_bytes(b"garbage")
    from genderfusion.extract.errors import BadImageError

    shutil.rmtree(ws / "cache")
    with pytest.raises(BadImageError, match="200003.jpg"):
        extract_features(data, "cnn-small", ws, progress=False)
    out = extract_features(data, "cnn-small", ws, skip_bad=True, progress=False)
    assert fc.load(out.path).attrs["notes"]["skipped_ids"] == ["200003"]


def test_a_registry_preprocessing_change_is_a_recipe_change(work, monkeypatch):
    """The cache check compares the whole recipe: a changed normalisation recomputes and says so."""
    import dataclasses

    from genderfusion.extract.models import registry

    data, ws = work
    args = dict(frozen=True, img_size=32, pool="avg", weights="random", progress=False)
    assert extract_features(data, "cnn-small", ws, **args).status == "computed"
    assert extract_features(data, "cnn-small", ws, **args).status == "hit"
    entry = registry.REGISTRY["cnn-small"]
    monkeypatch.setitem(registry.REGISTRY, "cnn-small", dataclasses.replace(entry, mean=(0.4, 0.4, 0.4)))
    out = extract_features(data, "cnn-small", ws, **args)
    assert out.status == "computed" and "mean" in out.reason


def test_a_local_weights_file_wins_over_hub_weights_in_recipe_and_model(work, tmp_path):
    data, ws = work
    weights = tmp_path / "w.pt"
    torch.manual_seed(3)
    model = create("cnn-small", 32, weights="random")
    torch.save(model.state_dict(), weights)
    out = extract_features(data, "cnn-small", ws, frozen=True, img_size=32, pool="avg", weights=str(weights),
                           pretrained=True, dtype="float32", progress=False)
    fs = fc.load(out.path)
    assert fs.attrs["checkpoint_sha256"] == [sha256_file(weights)]
    images, _ = cached_images(Workspace(ws), CompetitionData.load(data), "train", 32, progress=False)
    _, feats = infer(model.eval(), images, np.arange(5), pool="avg")
    assert np.allclose(fs.train.features[:5], feats, atol=1e-5)


def test_fold_models_of_different_configs_are_refused(work):
    data, ws = work
    train_backbone(data, TrainConfig("cnn-small", img_size=32, epochs=1, batch_size=16, dropout=0.2), ws, k=2,
                   fold=1, progress=False)
    with pytest.raises(WorkspaceError, match=r"fold 1 was trained with another config than fold 0 \(\['dropout'\]"):
        extract_features(data, "cnn-small", ws, progress=False)


def test_flip_tta_averages_the_image_and_its_mirror(work):
    data, ws = work
    args = dict(frozen=True, img_size=32, pool="avg", weights="random", dtype="float32", progress=False)
    plain = fc.load(extract_features(data, "cnn-small", ws, **args).path)
    out = extract_features(data, "cnn-small", ws, tta="flip", **args)
    flip = fc.load(out.path)
    assert out.path.name == "cnn-small-frozen-flip.h5" and flip.attrs["spec"]["tta"] == "flip"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create("cnn-small", 32, weights="random").eval()
    images, _ = cached_images(Workspace(ws), CompetitionData.load(data), "train", 32, progress=False)
    rows = np.arange(8)
    _, a = infer(model, images, rows, pool="avg")
    _, b = infer(model, np.ascontiguousarray(images[:, :, ::-1]), rows, pool="avg")
    assert np.allclose(plain.train.features[:8], a, atol=1e-5)
    assert np.allclose(flip.train.features[:8], (a + b) / 2, atol=1e-5)
    assert not np.allclose(a, b, atol=1e-3)  # the mirror is another view
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rot'"):
        extract_features(data, "cnn-small", ws, tta="rot", **args)
