"""The model shipped inside the package (genderfusion/default/: model.gfm, card.html, about.json), rebuilt by
`python bench/default_model.py`. Its one network that no PyPI package ships, FaceRes, is in that folder too
(bench/package_faceres.py) and unpacked into the cache on first use."""
from __future__ import annotations

import logging
from pathlib import Path

from genderfusion.extract.faces.faceres import packaged_dir
from genderfusion.files.json_files import read_json

log = logging.getLogger("genderfusion")
NAME = "default"
FILE = "model.gfm"


def default_dir() -> Path:
    """genderfusion/default/, the folder the package ships its model (and FaceRes) in."""
    return packaged_dir()


def default_path() -> Path:
    """The shipped model file; an installation without it is an error saying how to rebuild it."""
    path = default_dir() / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the default model is not installed; reinstall genderfusion, or rebuild it "
                                "with `python bench/default_model.py --data <competition folder>`")
    return path


def about() -> dict:
    """What the build recorded: sources, head, CV accuracy, training data and its licence."""
    return read_json(default_dir() / "about.json")


def describe() -> str:
    """One line for the user: which model predicts, and how good it is."""
    a = about()
    return (f"the shipped default model ({a['head']} on {', '.join(a['sources'])}; 5-fold CV {a['cv_accuracy']:.4f}, "
            f"trained on {a['trained_on']}; card: {default_dir() / 'card.html'})")


def ensure_files(sources: list[str]) -> None:
    """Put FaceRes where the model reads it, once, where a source needs it and it is not there yet: from the
    package's own copy (no network), else from the npm registry over HTTPS (sha512 and sha256 checked)."""
    from genderfusion.extract.faces import faceres

    nets = {max((n for n in faceres.NETS if s.startswith(n + "-")), key=len, default=None) for s in sources}
    missing = [net for net in nets - {None} if faceres.missing_files(net)]
    missing = [net for net in missing if not faceres.unpack(net)]  # the package's copy, checked
    if missing:  # one fetch brings every FaceRes net
        log.warning("the default model needs FaceRes (%s), not on this machine yet: fetching it once into %s",
                    faceres.PACKAGE, faceres.model_dir())
        faceres.fetch(log=log.warning)
