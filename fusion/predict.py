"""`predict` as a library call: a saved fusion model's predictions for test.csv, in submission format."""
from __future__ import annotations

import io
from pathlib import Path

from genderfusion.extract.atomic import write_text
from genderfusion.extract.data.dataset import CompetitionData
from genderfusion.extract.data.workspace import Workspace
from genderfusion.extract.errors import DataError

from .classifier import FusionClassifier


def predict_submission(model: str, data_dir: str | Path, out: str | Path, workdir: str | Path = "data",
                       band: tuple[float, float] = (0.45, 0.55)) -> dict:
    """Write `out` (id,label for every test id in test.csv order) and `<out stem>_details.csv`."""
    ws = Workspace(workdir)
    path = Path(model) if Path(model).suffix == ".pkl" else ws.head_model(model)
    clf = FusionClassifier.load(path)
    data = CompetitionData.load(data_dir, check_images=False)
    ids, proba = clf.predict_proba_cached(workdir)
    pos = {i: n for n, i in enumerate(ids)}
    missing = [i for i in data.test.ids if i not in pos]
    if missing:
        raise DataError(f"{len(missing)} test id(s) of {data.root / 'test.csv'} have no cached features "
                        f"(e.g. {missing[:5]}); run `extract` for every source first. No submission written.")
    p = proba[[pos[i] for i in data.test.ids], 1]
    labels = (p >= clf.threshold).astype(int)
    doubtful = (p >= band[0]) & (p <= band[1])
    out = Path(out)
    write_text(out, "id,label\n" + "".join(f"{i},{y}\n" for i, y in zip(data.test.ids, labels)))
    details = out.with_name(out.stem + "_details.csv")
    buf = io.StringIO()
    buf.write("id,label,p_female,doubtful\n")
    buf.writelines(f"{i},{y},{q:.5f},{int(d)}\n" for i, y, q, d in zip(data.test.ids, labels, p, doubtful))
    write_text(details, buf.getvalue())
    return {"submission": str(out), "details": str(details), "rows": len(labels),
            "female_fraction": float(labels.mean()), "doubtful": int(doubtful.sum())}
