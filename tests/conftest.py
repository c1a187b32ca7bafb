import os
from pathlib import Path

import pytest

from genderfusion.extract.data.synthetic import make_synthetic

REAL_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
if "FACES_DIR" in os.environ:
    REAL_FACES = Path(os.environ["FACES_DIR"])


@pytest.fixture(scope="session")
def synth_master(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synth"), n_train=60, n_test=12, size=32, seed=1)


@pytest.fixture
def synth(synth_master, tmp_path) -> Path:
    """A private, writable copy of a tiny synthetic competition folder."""
    import shutil

    return Path(shutil.copytree(synth_master, tmp_path / "comp"))


def train_cnn_small(data: Path, ws: Path, epochs: int = 1) -> Path:
    """Train a 2-fold cnn-small at 32 px on `data` into workspace `ws` and extract its features (float32)."""
    from genderfusion.extract.cache.api import extract_features
    from genderfusion.extract.models.training import TrainConfig, train_backbone

    train_backbone(data, TrainConfig("cnn-small", img_size=32, epochs=epochs, batch_size=16), ws, k=2,
                   progress=False)
    extract_features(data, "cnn-small", ws, dtype="float32", progress=False)
    return ws


@pytest.fixture(scope="session")
def cnn_small_workspace():
    """train_cnn_small, for module-scoped fixtures that build on a fine-tuned source."""
    return train_cnn_small
