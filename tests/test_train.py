import csv
import json

import pytest
import torch

from genderfusion.extract.models import training as train_mod
from genderfusion.extract.models.training import train_backbone
from genderfusion.extract.models.augment import AugmentConfig
from genderfusion.extract.models.training import TrainConfig

CFG = dict(img_size=32, epochs=3, batch_size=16, patience=5, seed=0)


def _cfg(**kw):
    return TrainConfig("cnn-small", **{**CFG, **kw})


def test_trains_every_fold_and_writes_outputs(synth, tmp_path):
    ws = tmp_path / "ws"
    s = train_backbone(synth, _cfg(), ws, k=2, progress=False)
    assert set(s["folds"]) == {0, 1} and 0 <= s["oof_accuracy"] <= 1
    d = ws / "models" / "cnn-small"
    for f in (0, 1):
        done = json.loads((d / f"fold{f}.json").read_text())
        assert len(done["sha256"]) == 64 and done["epochs_run"] == 3
        assert json.loads((d / f"fold{f}.config.json").read_text())["config"]["img_size"] == 32
        assert (d / f"fold{f}.curve.png").stat().st_size > 1000
        hist = list(csv.DictReader(open(d / f"fold{f}.history.csv")))
        assert [int(h["epoch"]) for h in hist] == [1, 2, 3]
        oof = list(csv.DictReader(open(d / f"fold{f}.oof.csv")))
        folds = dict(line.strip().split(",") for line in open(ws / "folds.csv") if line[0].isdigit())
        assert oof and all(folds[r["id"]] == str(f) for r in oof)  # only held-out rows
        assert done["preprocess"] == {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}


def test_a_finished_run_is_not_repeated(synth, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    train_backbone(synth, _cfg(epochs=1), ws, k=2, progress=False)
    before = {p.name: p.read_bytes() for p in (ws / "models/cnn-small").iterdir()}
    monkeypatch.setattr(train_mod, "create", lambda *a, **k: pytest.fail("a finished fold was trained again"))
    s = train_backbone(synth, _cfg(epochs=1), ws, progress=False)
    assert set(s["folds"]) == {0, 1}
    assert {p.name: p.read_bytes() for p in (ws / "models/cnn-small").iterdir()} == before


def test_interrupted_run_resumes_to_the_same_model(synth, tmp_path, monkeypatch):
    train_backbone(synth, _cfg(), tmp_path / "a", k=2, fold=0, progress=False)
    calls = {"n": 0}
    real_augment = train_mod.augment

    def dying_augment(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # in epoch 3 (2 batches an epoch)
            raise KeyboardInterrupt
        return real_augment(*args, **kw)

    monkeypatch.setattr(train_mod, "augment", dying_augment)
    with pytest.raises(KeyboardInterrupt):
        train_backbone(synth, _cfg(), tmp_path / "b", k=2, fold=0, progress=False)
    last = torch.load(tmp_path / "b/models/cnn-small/fold0.last.pt", weights_only=False)
    assert last["state"]["epoch"] == 2  # epoch 3 was lost, earlier ones kept
    monkeypatch.setattr(train_mod, "augment", real_augment)
    train_backbone(synth, _cfg(), tmp_path / "b", k=2, fold=0, progress=False)
    a = torch.load(tmp_path / "a/models/cnn-small/fold0.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b/models/cnn-small/fold0.pt", weights_only=False)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_more_epochs_extend_a_finished_run(synth, tmp_path, monkeypatch):
    """Asking for 2 epochs after 1 trains one more epoch (not two from scratch) and ends where 2 epochs end."""
    train_backbone(synth, _cfg(epochs=2), tmp_path / "straight", k=2, fold=1, progress=False)
    train_backbone(synth, _cfg(epochs=1), tmp_path / "ext", k=2, fold=1, progress=False)
    batches, real_augment = [], train_mod.augment
    monkeypatch.setattr(train_mod, "augment", lambda *a, **k: batches.append(1) or real_augment(*a, **k))
    s = train_backbone(synth, _cfg(epochs=2), tmp_path / "ext", k=2, fold=1, progress=False)
    assert s["folds"][1]["epochs_run"] == 2
    assert len(batches) == 2  # one epoch of 27 rows in batches of 16
    straight = torch.load(tmp_path / "straight/models/cnn-small/fold1.last.pt", weights_only=False)["model"]
    extended = torch.load(tmp_path / "ext/models/cnn-small/fold1.last.pt", weights_only=False)["model"]
    assert all(torch.allclose(straight[k].float(), extended[k].float(), atol=1e-5) for k in straight)


def test_augment_is_reproducible_and_respects_switches():
    x = torch.rand(4, 3, 16, 16)
    a = train_mod.augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    b = train_mod.augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    off = AugmentConfig(0, 0, 0, 0, 0, 0)
    assert torch.equal(train_mod.augment(x, off, torch.Generator()), x)
    flip = AugmentConfig(0, 0, 0, 0, 0, vflip_p=1.0)
    assert torch.equal(train_mod.augment(x, flip, torch.Generator()), x.flip(2))


def test_unknown_optimizer(synth, tmp_path):
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_backbone(synth, _cfg(optimizer="rmsprop"), tmp_path, k=2, fold=0, progress=False)


def test_the_saved_model_is_the_weight_average_of_every_step(synth, tmp_path, monkeypatch):
    """With ema d the checkpoint holds e_t = d e_(t-1) + (1 - d) w_t over the weights w_t after each optimizer step,
    e_0 the initial weights (a numpy-free reference: the recorded trajectory, averaged here in float64)."""
    snaps, real = [], train_mod._optimizer

    def recording(model, params, cfg):
        opt = real(model, params, cfg)
        take = lambda: {n: p.detach().clone().double() for n, p in model.named_parameters()}  # noqa: E731
        snaps.append(take())
        step = opt.step

        def stepped(*args, **kw):
            out = step(*args, **kw)
            snaps.append(take())
            return out

        opt.step = stepped
        return opt

    monkeypatch.setattr(train_mod, "_optimizer", recording)
    train_backbone(synth, _cfg(epochs=1, ema=0.7), tmp_path, k=2, fold=0, progress=False)
    saved = torch.load(tmp_path / "models/cnn-small/fold0.pt", weights_only=False)["state_dict"]
    assert len(snaps) == 3  # the initial weights and two steps (27 rows in batches of 16)
    differs = False
    for name in snaps[0]:
        e = snaps[0][name]
        for s in snaps[1:]:
            e = 0.7 * e + 0.3 * s[name]
        assert torch.allclose(saved[name].double(), e, atol=1e-6), name
        differs |= not torch.allclose(saved[name].double(), snaps[-1][name], atol=1e-6)
    assert differs  # the average, not the last step's weights


def test_a_weight_average_longer_than_the_run_is_warned_about(synth, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        train_backbone(synth, _cfg(epochs=1, ema=0.9), tmp_path / "a", k=2, fold=0, progress=False)
    assert any("(decay 0.9) has a time constant of 10 steps and this run 2" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # 2 steps against 1 / (1 - 0.4)
        train_backbone(synth, _cfg(epochs=1, ema=0.4), tmp_path / "b", k=2, fold=0, progress=False)
    assert not any("weight average" in r.message for r in caplog.records)


def test_the_face_networks_average_their_weights_by_default():
    assert TrainConfig("face-resnet").ema == TrainConfig("gender-cnn").ema == 0.998
    assert TrainConfig("cnn-small").ema == 0 and "ema" not in TrainConfig("cnn-small").identity()
