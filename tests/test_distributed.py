"""extract and train-backbone under torchrun: 2 gloo processes on tiny synthetic data give what one process gives."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from genderfusion.extract.cache import format as fc
from genderfusion.extract.cache.api import extract_features
from genderfusion.extract.models.training import TrainConfig, train_backbone

CFG = dict(img_size=32, epochs=1, batch_size=16)


def _torchrun(args: list[str], cwd, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_port", str(29500 + os.getpid() % 1000), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def single(synth_master, tmp_path_factory):
    """One process: cnn-small trained on 2 folds and extracted."""
    ws = tmp_path_factory.mktemp("single") / "ws"
    train_backbone(synth_master, TrainConfig("cnn-small", **CFG), ws, k=2, progress=False)
    out = extract_features(synth_master, "cnn-small", ws, dtype="float32", progress=False)
    return synth_master, ws, fc.load(out.path)


def test_two_ranks_train_and_extract_what_one_process_does(single, tmp_path):
    data, ws_single, ref = single
    ws = tmp_path / "ws"
    r = _torchrun(["-m", "genderfusion", "train-backbone", "--backbone", "cnn-small", "--img-size", "32",
                   "--epochs", "1", "--batch-size", "16", "--folds", "2", "--data", str(data), "--workdir", str(ws),
                   "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2-fold out-of-fold accuracy" in r.stdout
    configs = [torch.load(ws / f"models/cnn-small/fold{f}.pt", weights_only=False) for f in (0, 1)]
    for f, ckpt in enumerate(configs):  # the same checkpoint format and, up to float order, the same model
        single_ckpt = torch.load(ws_single / f"models/cnn-small/fold{f}.pt", weights_only=False)
        assert ckpt.keys() == single_ckpt.keys() and ckpt["identity"] == single_ckpt["identity"]
        assert all(torch.allclose(ckpt["state_dict"][k].float(), v.float(), atol=1e-4)
                   for k, v in single_ckpt["state_dict"].items())
    # extract from the single process's checkpoints, so that the features can be compared to 1e-6
    shutil.rmtree(ws / "models")
    shutil.copytree(ws_single / "models", ws / "models")
    r = _torchrun(["-m", "genderfusion", "extract", "--backbone", "cnn-small", "--dtype", "float32",
                   "--data", str(data), "--workdir", str(ws), "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "merged into" in r.stdout
    got = fc.load(ws / "features/cnn-small.h5")
    assert list(got.train.ids) == list(ref.train.ids) and list(got.test.ids) == list(ref.test.ids)
    assert np.array_equal(got.train.fold, ref.train.fold)
    assert np.abs(got.train.features - ref.train.features).max() <= 1e-6
    assert np.abs(got.test.features - ref.test.features).max() <= 1e-6
    assert np.abs(got.test.logits - ref.test.logits).max() <= 1e-6
    assert sorted(p.name for p in (ws / "features").glob("cnn-small.shard*.h5")) == ["cnn-small.shard0of2.h5",
                                                                                  "cnn-small.shard1of2.h5"]


def test_ranks_that_see_other_data_stop_with_the_same_message(single, tmp_path):
    data, ws_single, _ = single
    other = shutil.copytree(data, tmp_path / "other")
    (other / "train.csv").write_text((other / "train.csv").read_text().replace(",0\n", ",1\n", 1))
    script = tmp_path / "two_folders.py"
    script.write_text(
        "import os, sys\n"
        "from genderfusion.extract.distributed import extract_ranks\n"
        "data = sys.argv[1] if os.environ['RANK'] == '0' else sys.argv[2]\n"
        "try:\n"
        "    extract_ranks(data, 'cnn-small', sys.argv[3], progress=False)\n"
        "except ValueError as exc:\n"
        "    open(f'stop-{os.environ[\"RANK\"]}.txt', 'w').write(str(exc))\n"
        "    sys.exit(2)\n")
    r = _torchrun([str(script), str(data), str(other), str(ws_single)], tmp_path)
    assert r.returncode != 0
    messages = [(tmp_path / f"stop-{rank}.txt").read_text() for rank in (0, 1)]  # every rank stopped
    assert messages[0] == messages[1] and "disagree on the dataset fingerprint" in messages[0]
