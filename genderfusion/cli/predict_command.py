"""The predict console script: a competition submission (--data) or any photos (--images)."""
from __future__ import annotations

import json
import os
import sys

from genderfusion.cli.arguments import add_face_arguments, band, capped_workers, device, positive_int
from genderfusion.cli.running import make_parser, run_cli

UNREADABLE = 3  # exit status of a --images run that wrote every row but some inputs could not be read
EPILOG = (f"exit status: 0 all done; 2 an error (one line says which; no output written); {UNREADABLE} --images "
          "wrote every row, but some inputs could not be read (their rows carry the error; --strict stops instead); "
          "130 interrupted")


def _default_output(default: str, overwrite: bool, *beside: str) -> str:
    """A default output name (and the files written beside it), refused where a file already is, unless
    overwrite: a run never replaces a file the user did not name."""
    from genderfusion.fusion.photos.drawing import OutputExistsError

    there = [f for f in (default, *beside) if os.path.lexists(f)]
    if there and not overwrite:
        raise OutputExistsError(f"{there[0]} exists and this run did not write it",
                                "name another file with --out, or pass --overwrite to replace it")
    return default


def _plan(images: list[str], out: str, draw: str | None, overwrite: bool):
    """The photos, the output and the drawn names, checked before the model is loaded; errors name the flags."""
    from genderfusion.fusion.photos.drawing import OutputExistsError
    from genderfusion.fusion.predict.table import PhotoJob

    try:
        return PhotoJob.plan(images, out, draw, overwrite)
    except OutputExistsError as exc:
        raise OutputExistsError(f"--draw {draw}: {exc.what}",
                                "draw into another folder, or pass --overwrite to replace such files") from None


def predict_main(argv: list[str] | None = None) -> None:
    p = make_parser("predict", "Predict with a trained fusion model: a competition's test rows (--data) or any photos "
                               "(--images).")
    p.epilog = EPILOG
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
    p.add_argument("--band", type=band, default=None, help="doubtful band LO,HI of P(female) (default: the model's)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="--images: photos held in memory at once")
    bad = p.add_mutually_exclusive_group()
    bad.add_argument("--strict", action="store_true", help="--images: stop at the first file that cannot be read, "
                                                           "writing nothing (by default its row carries the error, every "
                                                           f"other row is written, and the exit status is {UNREADABLE})")
    bad.add_argument("--skip-bad", action="store_true", help="--images: the default (an unreadable file is a row with "
                                                             "its error); kept for scripts that pass it")
    p.add_argument("--device", type=device, default="auto", help="auto (CUDA if present), cpu, cuda …")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cascade", action="store_true", help="run every source on every image even when the model "
                                                             "has a cascade")
    add_face_arguments(p)
    p.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                   help="processes that decode photos and find their faces (default: 2, or 1 on one core)")
    p.add_argument("--draw", default=None, metavar="DIR", help="--images: write each photo with its faces' boxes, "
                                                               "labels and P(female) into DIR")
    args = p.parse_args(argv)

    def body():
        from genderfusion.fusion.model.classifier import FusionClassifier

        if args.data:
            from genderfusion.fusion.predict.submission import details_path, predict_submission

            out = args.out or _default_output("submission.csv", args.overwrite, str(details_path("submission.csv")))
            print(json.dumps(predict_submission(args.model or "fusion", args.data, out, args.workdir, args.band,
                                                not args.no_cascade), indent=2))
            return
        from genderfusion.extract.distributed import world
        from genderfusion.fusion.photos.inputs import example_photo
        from genderfusion.fusion.predict.options import PhotoOptions
        from genderfusion.fusion.predict.table import faces_table, predict_images

        out = args.out or _default_output("predictions.csv", args.overwrite)
        if args.example:
            args.images, args.draw = [str(example_photo())], args.draw or "drawn"
        job = _plan(args.images, out, args.draw, args.overwrite)
        options = PhotoOptions(args.faces, args.detector, args.min_face, args.band, args.batch_size, args.device,
                               not args.no_cascade, not args.strict, capped_workers(args.workers))
        if world():  # under torchrun: a shard a rank, merged in input order by rank 0
            from genderfusion.fusion.predict.ranks import predict_images_ranks

            summary = predict_images_ranks(lambda: FusionClassifier.load(args.model, args.workdir), job, options,
                                           not args.no_progress)
            if summary is None:  # not rank 0: rank 0 reports for all
                return
        else:
            summary = predict_images(FusionClassifier.load(args.model, args.workdir), job, options,
                                     not args.no_progress)
        rows = summary.pop("rows")
        if rows is not None and job.out.suffix.lower() == ".csv":
            print(faces_table(rows))
        print(json.dumps(summary, indent=2))
        if summary["unreadable"]:
            print(f"{summary['unreadable']} of {summary['images']} input(s) could not be read: their rows in "
                  f"{summary['out']} carry the error; exit status {UNREADABLE}", file=sys.stderr)
            sys.exit(UNREADABLE)

    run_cli(body, interrupted="interrupted; no output file was written (nothing else changed)")
