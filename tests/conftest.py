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
