"""`predict` as a library call: a saved fusion model's predictions for test.csv, in submission format."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from genderfusion.files.atomic import write_text

from genderfusion.files.outputs import check_output
from genderfusion.extract.cache import format as fc
from genderfusion.extract.data.dataset import CompetitionData
from genderfusion.extract.data.workspace import Workspace
from genderfusion.extract.errors import DataError, WorkspaceError

from genderfusion.fusion.model.classifier import FusionClassifier


def _check_test_images(ws: Workspace, sources: list[str], data: CompetitionData) -> set[str]:
    """Refuse cached test rows whose image is not the one in the data folder (the cache's key: file size and
    content digest); return the test ids skipped at extraction as corrupt (--skip-bad)."""
    key = dict(zip(data.test.ids, zip(data.test.sizes.tolist(), data.test.digests.tolist())))
    skipped: set[str] = set()
    for name in sources:
        path = ws.features_path(name)
        ids, keys = fc.test_rows(path)
        changed = [i for i, k in zip(ids, keys) if i in key and key[i] != k]
        if changed:
            raise DataError(f"{len(changed)} test image(s) in {data.test.folder} are not the ones {name}'s features "
                            f"were computed from (file size or content differs), e.g. ids {changed[:5]}; rerun `extract` "
                            "for every source, then predict. No submission written.")
        skipped |= set(fc.read_attrs(path).get("notes", {}).get("skipped_ids", [])) & set(key)
    return skipped


def _default_labels(data: CompetitionData) -> dict[str, str]:
    """The sample submission's label per id (for rows without a prediction), if the folder has one."""
    sample = data.root / "sampleSubmit.csv"
    if not sample.exists():
        return {}
    with open(sample, newline="", encoding="utf-8-sig") as fh:
        return {r["id"]: r.get("label", "") for r in csv.DictReader(fh)}


def _refuse_changed_labels(clf: FusionClassifier, model: str, data: CompetitionData) -> None:
    """The model must have been trained on train.csv's ids and labels as they are now."""
    if clf.train_labels_ is None:
        return
    ids, labels, skipped = (a.tolist() for a in clf.train_labels_)
    then = dict(zip(ids, labels))
    now = dict(zip(data.train.ids, data.train.labels.tolist()))
    changed = sorted(i for i in set(then) | set(now) if then.get(i) != now.get(i) and not (i in skipped and i in now))
    if changed:
        i = changed[0]
        raise DataError(f"{len(changed)} training row(s) of {data.root / 'train.csv'} changed since model {model} was "
                        f"trained (e.g. id {i}: label then {then.get(i, 'absent')}, now {now.get(i, 'absent')}); "
                        "rerun `extract` for every source and `train-head`. No submission written.")


def details_path(out: str | Path) -> Path:
    """The details file written beside a submission: `<out stem>_details.csv`."""
    out = Path(out)
    return out.with_name(out.stem + "_details.csv")


def predict_submission(model: str, data_dir: str | Path, out: str | Path, workdir: str | Path | None = None,
                       band: tuple[float, float] | None = None, cascade: bool = True) -> dict:
    """Write `out` (id,label for every test id in test.csv order) and `<out stem>_details.csv`, with the model
    `model` names (FusionClassifier.load) and its doubtful band unless `band` is given.

    A test image skipped as corrupt at extraction gets no label from a blank image: the sample submission's
    label (empty without one), flagged doubtful in the details file with the reason."""
    out, root = Path(out), Path(data_dir)
    details = details_path(out)
    inputs = [root / name for name in ("train.csv", "test.csv", "train_meta.csv", "sampleSubmit.csv")]
    for path in (out, details):
        check_output(path, (".csv",), inputs)
    clf = FusionClassifier.load(model, workdir)
    if clf.workdir_ is None:
        raise WorkspaceError(f"{model}: an exported model predicts from images; a submission reads the cached "
                             "features of a workspace: name its workdir")
    ws = Workspace(clf.workdir_)
    data = CompetitionData.load(data_dir, check_images=False)
    _refuse_changed_labels(clf, model, data)
    ids, det = clf.details_cached(clf.workdir_, band, cascade)
    pos = {i: n for n, i in enumerate(ids)}
    missing = [i for i in data.test.ids if i not in pos]
    if missing:
        raise DataError(f"{len(missing)} test id(s) of {data.root / 'test.csv'} have no cached features "
                        f"(e.g. {missing[:5]}); run `extract` for every source first. No submission written.")
    skipped = _check_test_images(ws, clf.source_names_, data)
    fallback = _default_labels(data) if skipped else {}
    order = [pos[i] for i in data.test.ids]
    p, stage = det["p_female"][order], det["stage"][order]
    labels = [fallback.get(i, "") if i in skipped else str(int(q >= clf.threshold)) for i, q in zip(data.test.ids, p)]
    doubtful = [(i in skipped) or bool(d) for i, d in zip(data.test.ids, det["doubtful"][order])]
    write_text(out, "id,label\n" + "".join(f"{i},{y}\n" for i, y in zip(data.test.ids, labels)))
    buf = io.StringIO()
    buf.write("id,label,p_female,doubtful,stage,reason\n")
    for i, y, q, d, st in zip(data.test.ids, labels, p, doubtful, stage):
        reason = "corrupt image skipped at extraction; label from the sample submission" if i in skipped else ""
        buf.write(f"{i},{y},{'' if i in skipped else f'{q:.5f}'},{int(d)},{0 if i in skipped else st},{reason}\n")
    write_text(details, buf.getvalue())
    predicted = np.array([y == "1" for i, y in zip(data.test.ids, labels) if i not in skipped])
    return {"submission": str(out), "details": str(details), "rows": len(labels),
            "female_fraction": float(predicted.mean()) if len(predicted) else None,
            "doubtful": int(sum(doubtful)), "stages": {name: int((stage == k).sum()) for k, name in
                                                       clf.stage_names(cascade).items() if k},
            "skipped": len(skipped),
            "test_images_checked": "ids, byte size and content digest (BLAKE2b) of every test image against each "
                                   "source's cache"}
