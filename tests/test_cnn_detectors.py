"""The CNN face detectors: MTCNN against facenet-pytorch's own cascade (its weights, its code), BlazeFace against
the TF.js graph its weights come from (run by onnxruntime), the weights' sha256 check, small faces in a large
photo, straightening by the eyes, and the box arithmetic against numpy formulas."""
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from genderfusion.extract.faces import detector_weights, faceres
from genderfusion.extract.faces.boxes import nms, square
from genderfusion.extract.faces.detect import CROP_SIZE, SMALLEST_FACE, Box, FaceDetector, check_detector
from genderfusion.extract.faces.mtcnn import pool2

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()  # 512x512, one face (a public-domain NASA portrait)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _canvas(face: np.ndarray, width: int, shape=(960, 1280), at=(300, 500), turn: float = 0.0) -> np.ndarray:
    """A grey photo with the face pasted `width` px wide (turned `turn` degrees counter-clockwise)."""
    canvas = Image.new("RGB", shape[::-1], (118, 120, 125))
    pasted = Image.fromarray(face).resize((width, width), Image.BILINEAR)
    mask = Image.new("L", pasted.size, 255)
    if turn:
        pasted, mask = pasted.rotate(turn, Image.BILINEAR, expand=True), mask.rotate(turn, Image.BILINEAR, expand=True)
    canvas.paste(pasted, at, mask)
    return np.asarray(canvas)


def _face_crop(astronaut) -> np.ndarray:
    return astronaut[20:240, 130:350]  # her face, with hair and chin


def test_mtcnn_matches_facenet_pytorchs_own_cascade(astronaut):
    """Same networks, same weights (read by facenet-pytorch from its own .pt files), same thresholds: the same
    faces, boxes within IoU 0.9, eye/nose/mouth points within 4 % of the box width."""
    ref_mod = pytest.importorskip("facenet_pytorch")
    photos = [astronaut, _canvas(_face_crop(astronaut), 90), _canvas(_face_crop(astronaut), 160, at=(700, 100))]
    from genderfusion.extract.faces import mtcnn

    ref = ref_mod.MTCNN(min_face_size=24, thresholds=list(mtcnn.THRESHOLDS), factor=mtcnn.FACTOR, keep_all=True,
                        post_process=False, select_largest=False)
    net = detector_weights.load_net("mtcnn", torch.device("cpu"))
    for photo in photos:
        got, got_points = net.detect(photo, 24)
        boxes, probs, points = ref.detect(Image.fromarray(photo), landmarks=True)
        assert boxes is not None and len(got) == len(boxes)
        for b, p, rb, rp in zip(got.tolist(), got_points.tolist(), boxes.astype(float).tolist(),
                                points.astype(float).tolist()):
            assert _iou(b[:4], rb) >= 0.9, (b, rb)
            width = rb[2] - rb[0]
            assert np.abs(np.array(p) - np.array(rp)).max() <= 0.04 * width, (p, rp)


def test_blazeface_matches_the_graph_its_weights_come_from(tmp_path):
    """The packaged weights in this project's network against the published TF.js graph run by onnxruntime (the
    graph's four heads, on a real face resized to 128 px)."""
    import json

    ort = pytest.importorskip("onnxruntime")
    from genderfusion.extract.faces.tfjs import tfjs_to_onnx

    graph = faceres.model_dir() / "facemesh-detection-short.json"
    if not graph.is_file():
        pytest.skip("the published graph is fetched by fetch-faceres (CI does)")
    tmp = json.loads(graph.read_text())  # the heads, without the reshapes after them (not convertible)
    tmp["modelTopology"]["node"] = [n for n in tmp["modelTopology"]["node"]
                                    if n["op"] not in ("Shape", "StridedSlice", "Pack", "Reshape", "ConcatV2",
                                                       "Identity")]
    work = tmp_path
    (work / graph.name).write_text(json.dumps(tmp))
    shutil.copy(graph.with_suffix(".bin"), work / graph.with_suffix(".bin").name)
    heads = [f"StatefulPartitionedCall/model/{k}_{s}/BiasAdd" for s in (8, 16) for k in ("classificator", "regressor")]
    session = ort.InferenceSession(tfjs_to_onnx(work / graph.name, heads))
    face = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((128, 128)))
    x = torch.from_numpy(face.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    ref = dict(zip(heads, session.run(None, {"images": x.numpy()})))
    with torch.no_grad():
        out = detector_weights.load_net("blazeface", torch.device("cpu"))(x)
    for s in (8, 16):
        scores, reg = out[s]
        np.testing.assert_allclose(scores.numpy(), ref[heads[0 if s == 8 else 2]], atol=2e-3, rtol=1e-4)
        np.testing.assert_allclose(reg.reshape(1, -1, *reg.shape[-2:]).numpy(), ref[heads[1 if s == 8 else 3]],
                                   atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mtcnn", "blazeface"])
def test_a_damaged_weights_file_is_refused_by_name(kind, tmp_path, monkeypatch):
    bad = tmp_path / detector_weights.WEIGHTS[kind][0]
    data = bytearray(detector_weights.weights_path(kind).read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(detector_weights, "weights_path", lambda name: bad)
    monkeypatch.setattr(detector_weights, "_NETS", {})
    with pytest.raises(ValueError, match=rf"{bad.name}: corrupted model file \(sha256 .*expected "
                                         rf"{detector_weights.WEIGHTS[kind][1]}"):
        FaceDetector(kind, 24).detect(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize("kind", ["mtcnn", "blazeface"])
def test_a_small_face_in_a_large_photo_is_found_where_it_is(kind, astronaut):
    """The crop pasted 80 px wide (her face about 30 px) near a corner of a 4000x3000 photo."""
    photo = _canvas(_face_crop(astronaut), 80, shape=(3000, 4000), at=(3880, 2880))
    boxes = FaceDetector(kind, 24).detect(photo)
    assert len(boxes) == 1, boxes
    b = boxes[0]
    assert abs((b.left + b.right) / 2 - 3914) <= 8 and abs((b.top + b.bottom) / 2 - 2918) <= 8, b
    assert 24 <= b.width <= 40 and len(b.points) >= 5


@pytest.mark.parametrize("kind", ["mtcnn", "blazeface"])
def test_a_turned_face_is_straightened_by_its_eyes(kind, astronaut):
    """Turned 30 degrees counter-clockwise (as seen): the eyes say so, and the straightened crop is closer to the
    upright face's crop than the crop as found."""
    face = _face_crop(astronaut)
    upright, turned = _canvas(face, 200), _canvas(face, 200, turn=30)
    det = FaceDetector(kind, 24)
    (b0,), (b1,) = det.detect(upright), det.detect(turned)
    assert abs(b1.turn - b0.turn - (-30)) <= 6, (b0.turn, b1.turn)
    ref = det.crop(upright, b0).astype(np.float32)
    straight = det.crop(turned, b1).astype(np.float32)
    as_found = FaceDetector(kind, 24, straighten=False).crop(turned, b1).astype(np.float32)
    assert straight.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert np.abs(straight - ref).mean() < 0.75 * np.abs(as_found - ref).mean()


def test_the_frame_of_a_turned_face_turns_with_it():
    det = FaceDetector("mtcnn", 24)
    upright = Box(100, 100, 200, 200, 1.0, ((130.0, 140.0), (170.0, 140.0)))
    c = math.cos(math.radians(30)) * 20
    s = math.sin(math.radians(30)) * 20
    turned = Box(100, 100, 200, 200, 1.0, ((150 - c, 140 - s), (150 + c, 140 + s)))
    assert turned.turn == pytest.approx(30)
    (x0, y0, side0), (x1, y1, side1) = det.frame(upright), det.frame(turned)
    assert side0 == side1
    d0, d1 = np.array([x0 - 150, y0 - 150]), np.array([x1 - 150, y1 - 150])
    rot = np.array([[math.cos(math.radians(30)), -math.sin(math.radians(30))],
                    [math.sin(math.radians(30)), math.cos(math.radians(30))]])
    np.testing.assert_allclose(d1, rot @ d0, atol=1e-9)


def test_nms_and_square_against_numpy():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (60, 2))
    wh = rng.uniform(5, 40, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0, 1, 60)
    for smaller in (False, True):
        keep, order = [], list(np.argsort(-scores))
        while order:
            i = order.pop(0)
            keep.append(i)
            rest = []
            for j in order:
                iw = max(0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
                ih = max(0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
                a = [(b[2] - b[0]) * (b[3] - b[1]) for b in (boxes[i], boxes[j])]
                over = iw * ih / (min(a) if smaller else a[0] + a[1] - iw * ih)
                if over <= 0.4:
                    rest.append(j)
            order = rest
        got = nms(torch.tensor(boxes), torch.tensor(scores), 0.4, smaller=smaller).tolist()
        assert got == keep
    from torchvision.ops import nms as torchvision_nms  # the library's own IoU suppression

    assert nms(torch.tensor(boxes), torch.tensor(scores), 0.5).tolist() == \
        torchvision_nms(torch.tensor(boxes), torch.tensor(scores), 0.5).tolist()
    sq = square(torch.tensor(boxes)).numpy()
    side = np.maximum(wh[:, 0], wh[:, 1])
    np.testing.assert_allclose(sq[:, 2] - sq[:, 0], side)
    np.testing.assert_allclose(sq[:, 3] - sq[:, 1], side)
    np.testing.assert_allclose((sq[:, :2] + sq[:, 2:]) / 2, xy + wh / 2)


def test_each_detector_names_its_smallest_face():
    for kind, least in SMALLEST_FACE.items():
        check_detector(kind, least)
        with pytest.raises(ValueError, match=rf"min_face {least - 1}: below {least} px.*{kind}"):
            check_detector(kind, least - 1)
    with pytest.raises(ValueError, match="detector 'retina': one of mtcnn, blazeface, hog, cnn"):
        check_detector("retina", 24)


def test_no_cuda_is_a_clear_error_when_cuda_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        FaceDetector("mtcnn", 24, device="cuda").detect(np.zeros((64, 64, 3), np.uint8))


def test_pnet_run_tile_by_tile_is_pnet_run_at_once():
    """The tiled P-Net map against P-Net on the whole level: the same on every window that lies inside it (the
    whole run also scores windows that its ceil-mode pooling lets hang over the edge; the tiled one leaves them)."""
    net = detector_weights.load_net("mtcnn", torch.device("cpu"))
    torch.manual_seed(0)
    for h, w in ((300, 517), (257, 263), (12, 12), (40, 600)):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            prob, reg = net._pnet_map(x)
            whole_prob, whole_reg = net.pnet(x)
        assert prob.shape == ((h - 12) // 2 + 1, (w - 12) // 2 + 1)
        torch.testing.assert_close(prob, whole_prob[0, :prob.shape[0], :prob.shape[1]], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reg, whole_reg[0, :, :prob.shape[0], :prob.shape[1]], atol=1e-5, rtol=1e-4)


def test_pnet_pooling_is_max_pool2d_with_ceil_mode():
    torch.manual_seed(0)
    for h, w in ((8, 8), (7, 9), (1, 5), (254, 131)):
        x = torch.randn(2, 10, h, w)
        torch.testing.assert_close(pool2(x), torch.nn.functional.max_pool2d(x, 2, 2, ceil_mode=True), atol=0, rtol=0)


def test_a_face_narrower_than_small_face_is_doubtful(astronaut):
    """Face.small by the numbers, and a row of predict_frame: the same face pasted small is doubtful, large not."""
    from genderfusion.fusion.photos.faces import DETECTED, SMALL_FACE, WHOLE, Face

    pixels = np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8)
    assert Face((10, 10, 10 + SMALL_FACE - 1, 60), pixels, DETECTED).small
    assert not Face((10, 10, 10 + SMALL_FACE, 60), pixels, DETECTED).small
    assert not Face((0, 0, 20, 20), pixels, WHOLE).small  # a whole image is never "small": the user chose it
    if faceres.missing_files("faceres-deep") and not faceres.packaged_dir().joinpath("faceres-deep.json").is_file():
        pytest.skip("the default model needs FaceRes")
    from genderfusion import FusionClassifier

    face = _face_crop(astronaut)
    photo = _canvas(face, 90, at=(200, 300)).copy()  # her face about 40 px wide
    photo[100:400, 700:1000] = np.asarray(Image.fromarray(face).resize((300, 300)))  # about 130 px
    frame = FusionClassifier.default().predict_frame(photo, faces="detect")
    widths = (frame["right"] - frame["left"]).tolist()
    assert len(widths) == 2 and min(widths) < SMALL_FACE <= max(widths), widths
    assert frame["doubtful"].tolist() == [w < SMALL_FACE for w in widths]
