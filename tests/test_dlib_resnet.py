"""dlib's face ResNet read from its .dat into torch equals dlib's own descriptor; bad files are named."""
import numpy as np
import pytest
import torch

from genderfusion.extract.faces import face_files as fs
from genderfusion.extract.faces import face_nets
from genderfusion.extract.faces.dlib_resnet import DlibFormatError, load_dlib_resnet
from tests.conftest import REAL_FACES

dlib = pytest.importorskip("dlib")
NET, SP = fs.DLIB_NET, fs.SHAPE_PREDICTOR


@pytest.fixture(scope="module")
def files():
    return fs.dlib_model_paths()


def _chips(files, n: int = 8) -> list[np.ndarray]:
    """Aligned 150 px chips of real faces when the data folder exists, else of synthetic images."""
    from genderfusion.extract.data.images import load_rgb

    if (REAL_FACES / "train").is_dir():
        images = [load_rgb(p) for p in sorted((REAL_FACES / "train").glob("*.jpg"))[:n]]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (120 + 9 * i, 110, 3), dtype=np.uint8) for i in range(n)]
    chips, _ = face_nets.Aligner(str(files[SP]), 150, 0.25)(images)
    return [np.ascontiguousarray(c) for c in chips]


def test_torch_descriptor_equals_dlibs(files):
    chips = _chips(files)
    ref = np.array([np.array(d) for d in dlib.face_recognition_model_v1(str(files[NET])).compute_face_descriptor(chips)])
    net = load_dlib_resnet(files[NET])
    with torch.inference_mode():
        out = net(net.normalize(torch.from_numpy(np.stack(chips)))).numpy()
    assert out.shape == (len(chips), 128)
    assert np.abs(out - ref).max() <= 1e-4, np.abs(out - ref).max()
    assert np.linalg.norm(ref, axis=1).min() > 0.1  # a real descriptor, not zeros on both sides


def test_a_file_that_is_not_the_network_is_named(files, tmp_path):
    with pytest.raises(DlibFormatError, match=f"{SP}: not dlib's face-recognition network"):
        load_dlib_resnet(files[SP])
    cut = tmp_path / "cut.dat"
    cut.write_bytes(files[NET].read_bytes()[:5_000_000])
    with pytest.raises(DlibFormatError, match=r"cut.dat: not dlib's face-recognition network: .*(ends early|expected)"):
        load_dlib_resnet(cut)


def test_a_layer_list_that_differs_names_the_first_layer(files, tmp_path):
    raw = files[NET].read_bytes()
    swapped = tmp_path / "swapped.dat"
    swapped.write_bytes(raw.replace(b"max_pool_2", b"avg_pool_2", 1))  # same length: the file still parses
    with pytest.raises(DlibFormatError, match=r"swapped.dat: layer 3 \(from the input\) is 'avg_pool_2', dlib's "
                                              r"face-recognition network has 'max_pool_2'"):
        load_dlib_resnet(swapped)
