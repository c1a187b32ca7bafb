"""Console scripts of the fusion package: train-head, predict."""
from __future__ import annotations

import argparse
import json
import logging
import os

from genderfusion.cli.arguments import (below_one, device, model_name, non_negative_float, non_negative_int,
                                           number, positive_int, source_list)
from genderfusion.cli.extract_commands import make_parser, run_cli
from genderfusion.extract.faces.detect import DETECTORS, MIN_FACE

from genderfusion.fusion.photos.faces import FACE_MODES
from genderfusion.fusion.serve.app import TOKEN_ENV

log = logging.getLogger("genderfusion")


def _band(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"band {text!r}: expected LO,HI with 0 <= LO <= HI <= 1")
    return lo, hi


def train_head_main(argv: list[str] | None = None) -> None:
    p = make_parser("train-head", "Train and compare fusion heads on cached features.")
    p.add_argument("--features", type=source_list, required=True,
                   help="comma-separated sources, e.g. cnn-deep,face-resnet-flip,dlib-face-flip")
    p.add_argument("--head", default="logistic", help="logistic, mlp, knn, a comma list, or all")
    p.add_argument("--protocol", default="per-fold,global",
                   help="per-fold, global, pooled, or a comma list of them")
    p.add_argument("--workdir", default="data")
    p.add_argument("--out", type=model_name, default="fusion", help="name of the saved model under <workdir>/heads/")
    p.add_argument("--band", type=_band, default=(0.45, 0.55), help="doubtful band LO,HI of P(female)")
    p.add_argument("--refit", action="store_true", help="recompute even when cached results match")
    p.add_argument("--exclude", default=None, metavar="FILE",
                   help="training ids no head trains on (a CSV with an id column, e.g. audit/suspects.csv, or one id "
                        "a line); every row is still evaluated on its given label")
    p.add_argument("--second-stage", action="store_true",
                   help="re-examine predictions inside --band by a kNN vote of the nearest training faces (frozen "
                        "sources' features); measured on out-of-fold rows; saved in the model when it raises the "
                        "out-of-fold accuracy")
    p.add_argument("--cascade", type=source_list, default=None, metavar="A,B",
                   help="put a cheap first stage in front: a head on these sources (some of --features; choose the "
                        "cheapest strong ones from bench/predict_speed.py) decides the images it is sure of, the rest "
                        "go on to every source")
    p.add_argument("--cascade-tolerance", type=below_one, default=0.0005,
                   help="accuracy the cascade may lose against the full model, out of fold (default 0.0005: 0.05 "
                        "points)")
    p.add_argument("--cascade-speed", type=non_negative_int, default=256, metavar="N",
                   help="measure the cascade's img/s on N test images of the workspace's data folder (0: not)")
    args = p.parse_args(argv)

    def body():
        from genderfusion.extract.data.workspace import Workspace

        from genderfusion.fusion.training.train_head import train_head

        heads = ["logistic", "mlp", "knn"] if args.head == "all" else args.head.split(",")
        report = train_head(args.workdir, args.features, heads, tuple(args.protocol.split(",")),
                            args.out, args.band, args.refit, args.exclude, args.second_stage,
                            args.cascade, args.cascade_tolerance,
                            args.cascade_speed)
        out = Workspace(args.workdir).head_dir(args.out)
        print((out / "report.md").read_text())
        c = report.get("cascade")
        if c:
            speed = c.get("speed")
            print(f"cascade {' + '.join(c['sources'])} ({c['head']}, band {c['band'][0]:.4f}..{c['band'][1]:.4f}): CV "
                  f"{c['cv_accuracy']:.4f} against {c['full_cv_accuracy']:.4f}, {c['exit_share']:.1%} of the rows "
                  "decided early out of fold" + (f"; {speed['cascade_img_per_s']} img/s against "
                                                 f"{speed['full_img_per_s']} on {speed['images']} test images "
                                                 f"(x{speed['speedup']})" if speed else ""))
        print(f"saved {Workspace(args.workdir).head_model(args.out)}; {report['seconds_total']:.1f} s"
              + (" (cached results)" if report["cached"] else ""))

    run_cli(body, "interrupted; the saved model and its report are unchanged")


def _face_arguments(p: argparse.ArgumentParser) -> None:
    """--faces, --detector, --min-face: how the faces of a photo are found (predict --images, serve)."""
    p.add_argument("--faces", choices=FACE_MODES, default="auto",
                   help="detect (every face a detector finds), whole (each image is one face), auto (detect; an "
                        "image whose one face fills it, or a small square one without a face found, is one face; the "
                        "rule column says which)")
    p.add_argument("--detector", choices=DETECTORS, default="hog", help="dlib's HOG (fast) or CNN (mmod) face detector")
    p.add_argument("--min-face", type=positive_int, default=MIN_FACE, metavar="PX",
                   help=f"skip faces narrower than this (default {MIN_FACE}: the smallest the detectors see in the "
                        "photo as it is); below it the photo is upsampled, 4x slower per halving")


def _capped_workers(workers: int) -> int:
    """--workers, at most the cores here (more processes than cores only add memory), said in one line."""
    cores = os.cpu_count() or 1
    if workers > cores:
        log.warning("--workers %d: capped at %d, the cores here", workers, cores)
    return min(workers, cores)


def _photo_model(model: str | None, workdir: str | None):
    """--images: the model named, else the workspace's `fusion`, else the shipped default (said in one line)."""
    from genderfusion.extract.data.workspace import Workspace

    from genderfusion.fusion.model.classifier import FusionClassifier
    from genderfusion.fusion.model.shipped import describe
    from genderfusion.fusion.predict.submission import load_model

    if model is not None:
        return load_model(model, workdir)
    ws = Workspace(workdir or "data")
    if ws.head_model("fusion").exists():
        return load_model("fusion", workdir)
    clf = FusionClassifier.default()
    log.warning("no --model, and no model `fusion` in the workspace %s: using %s", ws.root, describe())
    return clf


def _default_output(default: str, overwrite: bool, *beside: str) -> str:
    """A default output name (and the files written beside it), refused where a file already is, unless
    overwrite: a run never replaces a file the user did not name."""
    from genderfusion.fusion.photos.drawing import OutputExistsError

    there = [f for f in (default, *beside) if os.path.lexists(f)]
    if there and not overwrite:
        raise OutputExistsError(f"{there[0]} exists and this run did not write it",
                                "name another file with --out, or pass --overwrite to replace it")
    return default


def _check_drawing(folder: str, paths: list, overwrite: bool) -> None:
    from genderfusion.fusion.photos.drawing import OutputExistsError, drawn_names

    try:
        drawn_names(folder, paths, overwrite)
    except OutputExistsError as exc:
        raise OutputExistsError(f"--draw {folder}: {exc.what}",
                                "draw into another folder, or pass --overwrite to replace such files") from None
    except ValueError as exc:
        raise ValueError(f"--draw {exc}") from None


def predict_main(argv: list[str] | None = None) -> None:
    p = make_parser("predict", "Predict with a trained fusion model: a competition's test rows (--data) or any photos "
                               "(--images).")
    p.add_argument("--model", default=None, help="default (the model shipped with the package), a name under "
                                                 "<workdir>/heads/, or a model file (model.safetensors, or an exported "
                                                 ".gfm; its workspace: --workdir when given, else the one it was saved "
                                                 "in). Without it: fusion in the workspace; --images without such a "
                                                 "model: default")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", help="competition folder: a submission for its test.csv rows (cached features)")
    what.add_argument("--images", nargs="+", metavar="PATH",
                      help="photos: folders (recursive), globs, text files of paths (.txt), or files")
    what.add_argument("--example", action="store_true",
                      help="--images on the photo scikit-image ships (astronaut.png, a public-domain NASA portrait), "
                           "drawn into --draw (default drawn/)")
    p.add_argument("--workdir", default=None, help="workspace (default data)")
    p.add_argument("--out", default=None, help="default submission.csv (--data) or predictions.csv (--images; "
                                               ".parquet writes Parquet)")
    p.add_argument("--overwrite", action="store_true", help="replace a default output (submission.csv, "
                                                            "predictions.csv) or drawn photo that already exists "
                                                            "(never an input)")
    p.add_argument("--band", type=_band, default=(0.45, 0.55), help="doubtful band LO,HI of P(female)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="--images: photos held in memory at once")
    p.add_argument("--skip-bad", action="store_true", help="--images: write unreadable files with an error column "
                                                           "instead of stopping")
    p.add_argument("--device", type=device, default="auto", help="auto (CUDA if present), cpu, cuda …")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cascade", action="store_true", help="run every source on every image even when the model "
                                                             "has a cascade")
    _face_arguments(p)
    p.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                   help="processes that decode photos and find their faces (default: 2, or 1 on one core)")
    p.add_argument("--draw", default=None, metavar="DIR", help="--images: write each photo with its faces' boxes, "
                                                               "labels and P(female) into DIR")
    args = p.parse_args(argv)

    def body():
        if args.data:
            from genderfusion.fusion.predict.submission import predict_submission

            from genderfusion.fusion.predict.submission import details_path

            out = args.out or _default_output("submission.csv", args.overwrite, str(details_path("submission.csv")))
            out = predict_submission(args.model or "fusion", args.data, out, args.workdir, args.band,
                                     not args.no_cascade)
        else:
            from genderfusion.fusion.predict.rows import FaceOptions, check_table, expand_paths, faces_table, predict_images

            out = args.out or _default_output("predictions.csv", args.overwrite)
            if args.example:
                from genderfusion.fusion.predict.rows import example_photo

                args.images, args.draw = [str(example_photo())], args.draw or "drawn"
            paths = expand_paths(args.images)
            check_table(out, [*args.images, *paths])  # before the model is loaded
            if args.draw is not None:
                _check_drawing(args.draw, paths, args.overwrite)
            from genderfusion.extract.distributed import world

            options = FaceOptions(args.faces, args.detector, args.min_face, _capped_workers(args.workers))
            kw = dict(batch_size=args.batch_size, skip_bad=args.skip_bad, band=args.band, progress=not args.no_progress,
                      cascade=not args.no_cascade, options=options, draw=args.draw,
                      overwrite=args.overwrite)
            if world():  # under torchrun: a shard a rank, merged in input order by rank 0
                from genderfusion.fusion.predict.ranks import predict_images_ranks

                out = predict_images_ranks(lambda: _photo_model(args.model, args.workdir), paths, out, args.device,
                                           **kw)
                if out is None:  # not rank 0: rank 0 reports for all
                    return
            else:
                out = predict_images(_photo_model(args.model, args.workdir), paths, out, device=args.device, **kw)
            table = faces_table(out["out"])
            if table:
                print(table)
        print(json.dumps(out, indent=2))

    run_cli(body, interrupted="interrupted; no output file was written (nothing else changed)")


def export_model_main(argv: list[str] | None = None) -> None:
    p = make_parser("export-model", "Write a trained fusion model as one self-contained file (.gfm) that predicts "
                                    "from images without its workspace.")
    p.add_argument("--model", default="fusion", help="a name under <workdir>/heads/, or a model.safetensors path")
    p.add_argument("--workdir", default=None, help="workspace (default data)")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.gfm")
    args = p.parse_args(argv)

    def body():
        from pathlib import Path

        from genderfusion.fusion.model.export import export_model
        from genderfusion.fusion.predict.submission import load_model

        clf = load_model(args.model, args.workdir)
        beside = Path(args.model).parent if Path(args.model).is_file() else None
        card = None if clf.exported_ else (beside or Path(clf.workdir_) / "heads" / args.model) / "card.html"
        out = export_model(clf, args.out, card)
        print(json.dumps({k: out[k] for k in ("out", "megabytes", "sources", "folds", "frozen_files")}, indent=2))

    run_cli(body, "interrupted; no file was written")


def audit_labels_main(argv: list[str] | None = None) -> None:
    p = make_parser("audit-labels", "Find training faces whose label is in doubt: confident out-of-fold disagreement "
                                    "and duplicate images (exact and near) with another label.")
    p.add_argument("--workdir", default="data")
    p.add_argument("--data", default=None, help="competition folder (default: the one the workspace was made for)")
    p.add_argument("--model", default="fusion", help="a trained model under <workdir>/heads/ (its out-of-fold "
                                                     "probabilities)")
    p.add_argument("--descriptor", default=None, help="cached face descriptor for near duplicates (default: "
                                                      "dlib-face-flip, else dlib-face)")
    p.add_argument("--confidence", type=below_one, default=0.9,
                   help="a row whose out-of-fold P(its label) <= 1 - confidence is a confident disagreement")
    p.add_argument("--threshold", type=non_negative_float, default=None,
                   help="near-duplicate descriptor distance (default: read off the data's nearest-neighbour "
                        "distances)")
    p.add_argument("--top", type=non_negative_int, default=48, help="suspects shown in suspects.png")
    p.add_argument("--skip-bad", action="store_true", help="leave corrupt images out of the pixel hashing")
    args = p.parse_args(argv)

    def body():
        from genderfusion.fusion.audit.labels import audit_labels

        counts = audit_labels(args.workdir, args.data, args.model, args.descriptor, args.confidence, args.threshold,
                              args.top, args.skip_bad)
        print(json.dumps(counts, indent=2))

    run_cli(body, "interrupted; each file in audit/ is the old one or a complete new one")


def serve_main(argv: list[str] | None = None) -> None:
    p = make_parser("serve", "Serve a fusion model: POST /predict (photos -> one row per face), GET /health, and a page "
                             "at / to drop photos on. Binds to 127.0.0.1: put a reverse proxy with TLS, a body size "
                             "limit and authentication in front of it for the open internet.")
    p.add_argument("--model", default="default", help="default (shipped), a name under <workdir>/heads/, or a file")
    p.add_argument("--workdir", default=None)
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default loopback only; 0.0.0.0: every "
                                                       "interface, reachable from the network)")
    p.add_argument("--port", type=number(int, 1, "a port number from 1 to 65535", 65535), default=8000)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another Host header value to answer (a name the server is reached by); by default only the "
                        "--host name and loopback's names are answered, against DNS rebinding")
    p.add_argument("--token", default=None,
                   help=f"a token clients must send as 'Authorization: Bearer <token>' (or set {TOKEN_ENV}); the "
                        "page takes it as http://host:port/#token=...")
    p.add_argument("--docs", action="store_true", help="serve the interactive /docs page (it loads its scripts from "
                                                       "a CDN); /openapi.json is always served")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="server processes, each with the model loaded once and its share of the cores' threads "
                        "(at most the cores here)")
    p.add_argument("--max-mb", type=number(float, 0, "a positive number of MB", low_inclusive=False), default=20.0,
                   help="largest upload per request (MB)")
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000, help="largest image (pixels)")
    p.add_argument("--max-images", type=positive_int, default=16, help="images per request")
    p.add_argument("--queue", type=positive_int, default=8, help="requests that may wait; more get 503")
    p.add_argument("--timeout", type=number(float, 0, "a positive number of seconds", low_inclusive=False),
                   default=60.0, help="seconds per request; then 504")
    _face_arguments(p)
    args = p.parse_args(argv)

    def body():
        import importlib.util

        if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
            raise ModuleNotFoundError('serve needs FastAPI and uvicorn: pip install "genderfusion[serve]"')
        import uvicorn

        from genderfusion.fusion.predict.submission import load_model
        from genderfusion.fusion.serve.app import ENV, LOOPBACK, Limits, allowed_hosts, app_from_settings, thread_share

        workers = _capped_workers(args.workers)
        token = args.token or os.environ.get(TOKEN_ENV) or None
        clf = load_model(args.model, args.workdir)  # a bad --model fails here, in one line, before any server starts
        settings = {"model": args.model, "workdir": args.workdir, "threads": thread_share(workers),
                    "limits": vars(Limits(round(args.max_mb * 2**20), args.max_pixels, args.max_images, args.queue,
                                          args.timeout)),
                    "faces": {"faces": args.faces, "detector": args.detector, "min_face": args.min_face},
                    "hosts": allowed_hosts(args.host, tuple(args.allow_host)), "docs": args.docs}
        log.warning("serving %s on http://%s:%d (%d process(es), %d thread(s) each)", args.model, args.host,
                    args.port, workers, settings["threads"])
        if args.host not in LOOPBACK and token is None:
            log.warning("--host %s: reachable from the network with no authentication: anyone who can reach this "
                        "machine can use the model; pass --token (or set %s), or bind to 127.0.0.1", args.host,
                        TOKEN_ENV)
        if token is not None:
            os.environ[TOKEN_ENV] = token  # for the worker processes; not in the settings, which are logged
        if workers == 1:  # this process serves the model it has loaded
            uvicorn.run(app_from_settings(settings, clf), host=args.host, port=args.port, log_level="warning")
            return
        del clf  # each worker process loads its own
        os.environ[ENV] = json.dumps(settings)
        uvicorn.run("genderfusion.fusion.serve.app:app_from_env", factory=True, host=args.host, port=args.port,
                    workers=workers, log_level="warning")

    run_cli(body, interrupted="server stopped")
