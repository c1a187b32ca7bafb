"""Console scripts for models: train-head, export-model, audit-labels."""
from __future__ import annotations

import json

from genderfusion.cli.arguments import band, below_one, model_name, non_negative_float, non_negative_int, source_list
from genderfusion.cli.running import make_parser, run_cli



def train_head_main(argv: list[str] | None = None) -> None:
    p = make_parser("train-head", "Train and compare fusion heads on cached features.")
    p.add_argument("--features", type=source_list, required=True,
                   help="comma-separated sources, e.g. cnn-deep,face-resnet-flip,dlib-face-flip")
    p.add_argument("--head", default="logistic", help="logistic, mlp, knn, a comma list, or all")
    p.add_argument("--protocol", default="per-fold,global",
                   help="per-fold, global, pooled, or a comma list of them")
    p.add_argument("--workdir", default="data")
    p.add_argument("--out", type=model_name, default="fusion", help="name of the saved model under <workdir>/heads/")
    p.add_argument("--band", type=band, default=None, help="doubtful band LO,HI of P(female) (default 0.45,0.55)")
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

        from genderfusion.fusion.training.train_head import HeadTraining, train_head
        from genderfusion.heads.second_stage import DEFAULT_BAND

        heads = ["logistic", "mlp", "knn"] if args.head == "all" else args.head.split(",")
        training = HeadTraining(args.features, heads, tuple(args.protocol.split(",")), args.out,
                                args.band or DEFAULT_BAND, args.refit, args.exclude, args.second_stage, args.cascade,
                                args.cascade_tolerance, args.cascade_speed)
        report = train_head(args.workdir, training, log=print)
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


def export_model_main(argv: list[str] | None = None) -> None:
    p = make_parser("export-model", "Write a trained fusion model as one self-contained file (.gfm) that predicts "
                                    "from images without its workspace.")
    p.add_argument("--model", default="fusion", help="a name under <workdir>/heads/, or a model.safetensors path")
    p.add_argument("--workdir", default=None, help="workspace (default data)")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.gfm")
    args = p.parse_args(argv)

    def body():
        from genderfusion.fusion.model.classifier import FusionClassifier
        from genderfusion.fusion.model.export import export_model
        from genderfusion.fusion.model.loading import model_path

        clf = FusionClassifier.load(args.model, args.workdir)
        path, _ = model_path(args.model, args.workdir)
        card = None if clf.exported_ else (path if path.is_dir() else path.parent) / "card.html"
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
                              args.top, args.skip_bad, log=print)
        print(json.dumps(counts, indent=2))

    run_cli(body, "interrupted; each file in audit/ is the old one or a complete new one")
