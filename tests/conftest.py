import hashlib
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


FROZEN = "timm:mobilenetv3_small_050"
SOURCES = ["cnn-small", f"{FROZEN}-frozen".replace(":", "_")]  # the sources of `built`


@pytest.fixture(scope="module")
def built(synth_master, tmp_path_factory, cnn_small_workspace):
    """Synthetic data with a 2-fold cnn-small and a frozen timm source extracted."""
    from genderfusion.extract.cache.api import extract_features

    ws = cnn_small_workspace(synth_master, tmp_path_factory.mktemp("fusion") / "ws", epochs=2)
    extract_features(synth_master, FROZEN, ws, frozen=True, img_size=32, pool="avg", dtype="float32",
                     progress=False)
    return synth_master, ws


@pytest.fixture
def work(built, tmp_path):
    """A private, writable copy of `built`."""
    import shutil

    data, ws = built
    return data, shutil.copytree(ws, tmp_path / "ws")


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fails(main, argv, capsys, code: int = 2) -> str:
    """Run a console script that must stop: its exit code, and the one line it printed (no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(("usage:", "  ", "INFO", "WARNING"))]
    assert len(lines) == 1, err
    return lines[0]
