"""An exported model predicts alone: export a workspace model, load the .gfm with another Python (a clean venv that
has only the package and its extras) in another folder, with the workspace renamed away, and compare P(female) on
test images with the workspace model's.

    python -m venv /tmp/clean && /tmp/clean/bin/pip install "dist/genderfusion-*.whl[faces]"
    python bench/export_check.py --workdir data/bench-cpu --model best --data ../shared/data/faces --n 256 \\
        --python /tmp/clean/bin/python --out bench/results/cpu_export.json
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from genderfusion.files.atomic import write_json
from genderfusion.extract.data.workspace import Workspace
from genderfusion.fusion.model.classifier import FusionClassifier
from genderfusion.fusion.model.export import export_model

CLEAN = """import json, sys, time
from genderfusion import FusionClassifier, __version__
import genderfusion
t = time.time()
clf = FusionClassifier.load(sys.argv[1])
load_s = time.time() - t
paths = open(sys.argv[2]).read().split()
out = {k: clf.predict_proba(paths, cascade=c)[:, 1].tolist() for k, c in (("cascade", True), ("no_cascade", False))}
print(json.dumps({"version": __version__, "package": genderfusion.__file__, "load_s": load_s,
                  "p": out, "predict_s": time.time() - t - load_s}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", default="best")
    p.add_argument("--data", required=True, help="competition folder (its test images are predicted)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--python", required=True, help="the clean environment's Python")
    p.add_argument("--out", default=None, help="a JSON file for the results")
    p.add_argument("--hide", choices=("rename", "mount"), default="rename",
                   help="how the workspace is hidden from the clean process: renamed away meanwhile, or an empty "
                        "folder mounted over it in a mount namespace of its own (while other runs use it)")
    args = p.parse_args()

    clf = FusionClassifier.load(args.model, args.workdir)
    head_dir = Workspace(args.workdir).head_dir(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="export-check-"))
    (tmp / "images").mkdir()
    paths = [shutil.copy(q, tmp / "images") for q in sorted((Path(args.data) / "test").glob("*.jpg"))[:args.n]]
    ref = {k: clf.predict_proba(paths, cascade=c)[:, 1] for k, c in (("cascade", True), ("no_cascade", False))}
    gfm = tmp / "model.gfm"
    t = time.time()
    manifest = export_model(clf, gfm, head_dir / "card.html")
    export_s = time.time() - t
    (tmp / "paths.txt").write_text("\n".join(map(str, paths)))
    with zipfile.ZipFile(gfm) as z:
        entries = {i.filename: (i.file_size, i.compress_size) for i in z.infolist()}
    cmd = [args.python, "-c", CLEAN, str(gfm), str(tmp / "paths.txt")]
    env = {**os.environ, "PYTHONPATH": ""}
    workdir = Path(args.workdir).resolve()
    if args.hide == "mount":  # an empty folder over the workspace, for the clean process alone (Linux, root)
        (tmp / "empty").mkdir()
        script = f"mount --bind {shlex.quote(str(tmp / 'empty'))} {shlex.quote(str(workdir))} && exec {shlex.join(cmd)}"
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=tmp,
                              capture_output=True, text=True, env=env)
    else:
        hidden = Path(str(workdir) + ".hidden")
        os.rename(workdir, hidden)  # no workspace the model could find
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=env)
        finally:
            os.rename(hidden, workdir)
    if proc.returncode:
        sys.exit(f"the clean environment failed:\n{proc.stderr}")
    got = json.loads(proc.stdout.splitlines()[-1])
    diff = {k: float(np.abs(np.array(got["p"][k]) - ref[k]).max()) for k in ref}
    fold_bytes = sum(s for name, (s, _) in entries.items() if name.startswith("folds/"))
    result = {"model": args.model, "workdir": args.workdir, "images": len(paths), "export_s": round(export_s, 1),
              "gfm_bytes": gfm.stat().st_size, "model_entry_bytes": entries["model.safetensors"][0],
              "model_pickle_bytes_before": len(pickle.dumps(clf.detached())),  # what the v1 model.pkl held
              "fold_tensor_bytes": fold_bytes, "folds": {b: len(f) for b, f in manifest["folds"].items()},
              "clean_python": args.python, "workspace_hidden_by": args.hide, "clean_package": got["package"],
              "clean_load_s": round(got["load_s"], 2), "clean_predict_s": round(got["predict_s"], 1),
              "max_abs_diff_p": diff}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
