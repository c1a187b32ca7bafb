"""Console scripts of the fusion package: train-head, predict."""
from __future__ import annotations

import argparse
import json

from genderfusion.extract.cli import make_parser, run_cli


def _band(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"band {text!r}: expected LO,HI with 0 <= LO <= HI <= 1")
    return lo, hi


def train_head_main(argv: list[str] | None = None) -> None:
    p = make_parser("train-head", "Train and compare fusion heads on cached features.")
    p.add_argument("--features", required=True, help="comma-separated sources, e.g. cnn-deep,face-resnet-flip,dlib-face-flip")
    p.add_argument("--head", default="logistic", help="logistic, mlp, knn, a comma list, or all")
    p.add_argument("--protocol", default="per-fold,global", help="per-fold, global, or both (comma list)")
    p.add_argument("--workdir", default="data")
    p.add_argument("--out", default="fusion", help="name of the saved model under <workdir>/heads/")
    p.add_argument("--band", type=_band, default=(0.45, 0.55), help="doubtful band LO,HI of P(female)")
    p.add_argument("--refit", action="store_true", help="recompute even when cached results match")
    args = p.parse_args(argv)

    def body():
        from genderfusion.extract.data.workspace import Workspace

        from .train_head import train_head

        heads = ["logistic", "mlp", "knn"] if args.head == "all" else args.head.split(",")
        report = train_head(args.workdir, args.features.split(","), heads, tuple(args.protocol.split(",")),
                            args.out, args.band, args.refit)
        out = Workspace(args.workdir).head_dir(args.out)
        print((out / "report.md").read_text())
        print(f"saved {out / 'model.pkl'}; {report['seconds_total']:.1f} s"
              + (" (cached results)" if report["cached"] else ""))

    run_cli(body)


def predict_main(argv: list[str] | None = None) -> None:
    p = make_parser("predict", "Write a submission CSV with a trained fusion model.")
    p.add_argument("--model", default="fusion", help="a name under <workdir>/heads/, or a model.pkl path")
    p.add_argument("--data", required=True, help="competition folder (its test.csv sets the rows)")
    p.add_argument("--workdir", default="data")
    p.add_argument("--out", default="submission.csv")
    p.add_argument("--band", type=_band, default=(0.45, 0.55), help="doubtful band LO,HI of P(female)")
    args = p.parse_args(argv)

    def body():
        from .predict import predict_submission

        print(json.dumps(predict_submission(args.model, args.data, args.out, args.workdir, args.band), indent=2))

    run_cli(body)
