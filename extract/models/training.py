"""Fine-tuning (`train-backbone` as a library call): every fold of the shared split, each with early stopping,
LR on plateau, resume and out-of-fold logits."""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genderfusion.files.atomic import atomic_path, write_json, write_text
from genderfusion.files.digests import sha256_file
from genderfusion.files.json_files import read_json
from genderfusion.option_errors import option_error

from ..data.dataset import CompetitionData
from ..data.exclusion import exclusion_mask, read_ids
from ..data.folds import ensure_folds
from ..data.image_cache import cached_images
from ..data.workspace import FoldFiles, Workspace
from .augment import AugmentConfig, augment, normalize, to_float
from .backbone import Backbone, check_cut, create
from .checkpoints import read_checkpoint
from .ema import WeightAverage
from .inference import autocast, infer, resolve_device
from .registry import REGISTRY, lookup, weights_identity

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run; saved next to each checkpoint."""

    backbone: str
    img_size: int | None = None  # None: the backbone's (64; a pretrained face network's own size)
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"  # or "sgd"
    lr: float | None = None  # None: the backbone's (1e-3; 3e-4 for the pretrained face networks)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    dropout: float | None = None  # None: the backbone's (0.5; 0.2 for the pretrained face networks)
    lr_factor: float = 0.3
    lr_patience: int = 1
    patience: int = 3  # early stopping, epochs without a better validation loss
    val_fraction: float = 0.1  # inner validation split carved from the training folds
    seed: int = 0
    pretrained: bool = False
    weights: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trunk_cut: str | None = None  # None: the backbone's (face-resnet: stage3); trains the stages above it
    exclude_fingerprint: str | None = None  # sha256 of the ids left out of training (--exclude), None: none
    trunk_views: int = 2  # above a trunk cut: cached views per image (the image, its mirror, augmented copies)
    ema: float | None = None  # None: the backbone's; decay of the weight average validated and saved, 0: off

    def __post_init__(self):
        entry = lookup(self.backbone)
        self.img_size = self.img_size or entry.default_size()
        self.lr = entry.lr if self.lr is None else self.lr
        self.dropout = entry.dropout if self.dropout is None else self.dropout
        self.ema = entry.ema if self.ema is None else self.ema
        self.trunk_cut = self.trunk_cut or entry.trunk_cut
        if self.trunk_views < 2:
            raise ValueError(f"trunk_views {self.trunk_views}: at least 2 (the image and its mirror)")

    def as_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """The fields that change the trained model (not epochs: more epochs extend a run; a trunk cut only where
        there is one, so that checkpoints written before it existed stay valid)."""
        d = self.as_dict()
        d.pop("epochs")
        for name in ("trunk_cut", "exclude_fingerprint"):
            if d[name] is None:
                d.pop(name)
        if not d["ema"]:
            d.pop("ema")
        if d["trunk_views"] == 2:
            d.pop("trunk_views")
        return d


def inner_split(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of idx into (train, validation)."""
    rng = np.random.default_rng(seed)
    val = []
    for c in (0, 1):
        members = idx[labels[idx] == c]
        members = members[rng.permutation(len(members))]
        val.append(members[: max(1, int(round(len(members) * fraction)))])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(idx, val_idx), val_idx


class ImageFeed:
    """Training on uint8 images [N, S, S, 3]: augmented and normalised batches through the whole model."""

    def __init__(self, images: np.ndarray, augment_cfg: AugmentConfig):
        self.images, self.augment_cfg = images, augment_cfg

    def parameters(self, model: Backbone) -> list[torch.nn.Parameter]:
        return list(model.parameters())

    def train_logits(self, model: Backbone, idx: np.ndarray, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        x = to_float(torch.from_numpy(np.ascontiguousarray(self.images[idx])).to(dev))
        x = normalize(augment(x, self.augment_cfg, gen), model.preprocess.mean, model.preprocess.std)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x)

    def logits(self, model: Backbone, idx: np.ndarray, dev: torch.device, progress: bool = False,
               desc: str = "infer") -> np.ndarray:
        return infer(model, self.images, idx, batch_size=256, device=dev, progress=progress, desc=desc)[0]


class TrunkFeed:
    """Training above a frozen trunk, on its cached activations [N, V, C, H, W] of each image, its mirror and V - 2
    augmented copies: a random view per image in training, the mean logit of the first two in evaluation."""

    def __init__(self, acts: np.ndarray, cut: str):
        self.acts, self.cut = acts, cut

    def parameters(self, model: Backbone) -> list[torch.nn.Parameter]:
        """The blocks above the cut and the head; the trunk's weights stay as they are."""
        return model.body.top_parameters(self.cut) + list(model.head.parameters())

    def _logits(self, model: Backbone, a: np.ndarray, dev: torch.device) -> torch.Tensor:
        return model.forward_head(model.body.top(torch.from_numpy(a).to(dev).float(), self.cut))

    def train_logits(self, model: Backbone, idx: np.ndarray, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        views = torch.randint(0, self.acts.shape[1], (len(idx),), generator=gen).numpy()
        return self._logits(model, self.acts[idx, views], dev)

    @torch.inference_mode()
    def logits(self, model: Backbone, idx: np.ndarray, dev: torch.device, progress: bool = False,
               desc: str = "infer") -> np.ndarray:
        model.eval()
        out = [(self._logits(model, self.acts[i, 0], dev) + self._logits(model, self.acts[i, 1], dev)).float().cpu()
               / 2 for i in np.array_split(idx, max(1, len(idx) // 256))]
        return torch.cat(out).numpy() if out else np.empty(0, np.float32)


NEW_LAYER_LR_MULT = 10  # a new output layer on a pretrained network learns this much faster than the rest


def _optimizer(model: Backbone, params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `params` (of model); the model's new layer, if any, at NEW_LAYER_LR_MULT times the lr."""
    new = {id(p) for name, p in model.named_parameters() if name in model.new_keys}
    groups = [{"params": [p for p in params if id(p) not in new], "lr": cfg.lr},
              {"params": [p for p in params if id(p) in new], "lr": cfg.lr * NEW_LAYER_LR_MULT}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adamw")


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_history(paths: FoldFiles, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    write_text(paths.history, buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], label="train")
    a.plot(ep, [h["val_loss"] for h in history], label="validation")
    a.set_xlabel("epoch"), a.set_ylabel("BCE loss"), a.legend()
    b.plot(ep, [h["train_acc"] for h in history], label="train")
    b.plot(ep, [h["val_acc"] for h in history], label="validation")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend()
    fig.suptitle(f"{paths.root.name} fold {paths.k}")
    fig.tight_layout()
    with atomic_path(paths.curve) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _finished(paths: FoldFiles, identity: dict, cfg: TrainConfig, content_fp: str | None) -> dict | None:
    """The summary of the fold when it is already trained with this identity on these images; None otherwise (a
    fold trained on other image contents loses its resume state)."""
    if not paths.done.exists():
        return None
    done = read_json(paths.done)
    same_images = done.get("content_fingerprint") in (None, content_fp)  # None: recorded before contents were
    if done["identity"] == identity and done["epochs_requested"] >= cfg.epochs and paths.best.exists():
        if same_images:
            log.info("fold %d of %s is already trained (%s)", paths.k, cfg.backbone, paths.done)
            return done
        log.warning("fold %d of %s: training images changed since it was trained (same ids, labels and sizes, "
                    "other contents); training it again", paths.k, cfg.backbone)
        paths.last.unlink(missing_ok=True)
    return None


def _resume(paths: FoldFiles, identity: dict, trainer: tuple, backbone: str) -> dict:
    """The training state: from fold<k>.last.pt when it has this identity (the model, its weight average,
    optimiser, scheduler and random state restored), else a fresh one."""
    model, average, opt, sched = trainer
    state = {"epoch": 0, "history": [], "best_val_loss": float("inf"), "bad_epochs": 0}
    if not paths.last.exists():
        return state
    last = read_checkpoint(paths.last)
    if last["identity"] != identity:
        log.warning("%s belongs to another config; starting fold %d afresh", paths.last, paths.k)
        return state
    model.load_state_dict(last["model"])
    if average is not None:
        average.model.load_state_dict(last["average"])
    opt.load_state_dict(last["optimizer"])
    sched.load_state_dict(last["scheduler"])
    torch.set_rng_state(last["torch_rng"])  # dropout draws continue as if never interrupted
    log.info("resuming fold %d of %s after epoch %d", paths.k, backbone, last["state"]["epoch"])
    return last["state"]


def _train_epoch(feed, trainer: tuple, order: np.ndarray, y_all: torch.Tensor, gen: torch.Generator,
                 dev: torch.device, batch_size: int, desc: str, progress: bool) -> tuple[float, float]:
    """One pass over `order` in batches (model, weight average or None, optimiser); mean loss and accuracy."""
    from tqdm.auto import tqdm

    model, average, opt = trainer
    model.train()
    tot_loss, tot_ok, seen = 0.0, 0, 0
    with tqdm(total=len(order), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            idx = np.sort(idx)  # sorted reads are faster on a memory-mapped cache
            y = y_all[idx].to(dev)
            with autocast(dev):
                logit = feed.train_logits(model, idx, gen, dev)
            loss = F.binary_cross_entropy_with_logits(logit.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update(model)
            tot_loss += loss.item() * len(idx)
            tot_ok += int(((logit.detach() > 0).float() == y).sum())
            seen += len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{tot_loss / seen:.4f}", acc=f"{tot_ok / seen:.3f}")
    return tot_loss / seen, tot_ok / seen


def _out_of_fold(paths: FoldFiles, feed, model, hold: np.ndarray, labels: np.ndarray, ids: list[str],
                 dev: torch.device, progress: bool) -> float:
    """The fold model's logits on its held-out rows, written to fold<k>.oof.csv; their accuracy."""
    oof_logit = feed.logits(model, hold, dev, progress=progress, desc=f"oof fold {paths.k}")
    buf = io.StringIO()
    buf.write("id,label,fold,logit\n")
    buf.writelines(f"{ids[i]},{labels[i]},{paths.k},{v:.6f}\n" for i, v in zip(hold, oof_logit))
    write_text(paths.oof, buf.getvalue())
    return float(((oof_logit > 0) == labels[hold]).mean())


def train_fold(paths: FoldFiles, feed: ImageFeed | TrunkFeed, labels: np.ndarray, ids: list[str], folds: np.ndarray,
               cfg: TrainConfig, provenance: dict, device: str = "auto", progress: bool = True,
               excluded: np.ndarray | None = None, content_fp: str | None = None) -> dict:
    """Train fold paths.k (rows with folds == k are held out; rows of fold -1, corrupt, and `excluded` rows are
    never trained on) on the feed's inputs and return its summary.

    Resumes from fold<k>.last.pt when the config matches; a finished fold is returned as is, unless the training
    images' contents (content_fp) changed since it was trained.
    """
    k = paths.k
    identity = {"config": cfg.identity(), **provenance}
    done = _finished(paths, identity, cfg, content_fp)
    if done is not None:
        return done
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed * 1000 + k)
    model = create(cfg.backbone, cfg.img_size, pretrained=cfg.pretrained, weights=cfg.weights, dropout=cfg.dropout)
    model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, feed.parameters(model), cfg)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    usable = (folds != k) & (folds >= 0) & (True if excluded is None else ~excluded)
    fit_idx, val_idx = inner_split(np.flatnonzero(usable), labels, cfg.val_fraction, cfg.seed + k)
    steps = cfg.epochs * -(-len(fit_idx) // cfg.batch_size)
    if average is not None and steps < 1 / (1 - cfg.ema):
        log.warning("fold %d of %s: the weight average (decay %g) has a time constant of %d steps and this run %d, "
                    "so the saved model stays near its initial weights; choose a smaller decay, or 0 (none)",
                    k, cfg.backbone, cfg.ema, round(1 / (1 - cfg.ema)), steps)
    state = _resume(paths, identity, (model, average, opt, sched), cfg.backbone)
    write_json(paths.config, {"config": cfg.as_dict(), **provenance, "fold": k, "device": str(dev),
                              "n_fit": len(fit_idx), "n_val": len(val_idx), "n_holdout": int((folds == k).sum())})
    y_all = torch.as_tensor(labels, dtype=torch.float32)
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"] + 1
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + k * 1009 + epoch)
        order = fit_idx[torch.randperm(len(fit_idx), generator=gen).numpy()]
        t0 = time.time()
        train_loss, train_acc = _train_epoch(feed, (model, average, opt), order, y_all, gen, dev, cfg.batch_size,
                                             f"{cfg.backbone} fold {k} epoch {epoch}/{cfg.epochs}", progress)
        evaluated = model if average is None else average.model
        val_logit = feed.logits(evaluated, val_idx, dev)
        val_y = labels[val_idx]
        val_loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(val_logit), torch.from_numpy(val_y).float()))
        val_acc = float(((val_logit > 0) == val_y).mean())
        sched.step(val_loss)
        row = {"epoch": epoch, "train_loss": round(train_loss, 5), "train_acc": round(train_acc, 5),
               "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5), "lr": opt.param_groups[0]["lr"],
               "seconds": round(time.time() - t0, 1)}
        state["history"].append(row)
        if val_loss < state["best_val_loss"]:
            state["best_val_loss"], state["bad_epochs"] = val_loss, 0
            _save({"state_dict": evaluated.state_dict(), "identity": identity, "fold": k, "epoch": epoch,
                   "preprocess": model.preprocess.as_dict()}, paths.best)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        _save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "state": state, "identity": identity, "torch_rng": torch.get_rng_state(),
               **({} if average is None else {"average": average.model.state_dict()})}, paths.last)
        _write_history(paths, state["history"])
        log.info("%s fold %d epoch %d: %s", cfg.backbone, k, epoch, row)
    best = read_checkpoint(paths.best)
    model.load_state_dict(best["state_dict"])
    hold = np.flatnonzero(folds == k)
    oof_acc = _out_of_fold(paths, feed, model, hold, labels, ids, dev, progress)
    done = {"identity": identity, "fold": k, "epochs_requested": cfg.epochs, "epochs_run": state["epoch"],
            "best_epoch": best["epoch"], "oof_accuracy": oof_acc, "n_holdout": len(hold),
            "checkpoint": paths.best.name, "sha256": sha256_file(paths.best), "preprocess": best["preprocess"],
            "content_fingerprint": content_fp,
            "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in state["history"]])), 1)
            if state["history"] else None}
    write_json(paths.done, done)
    return done


def prepare_training(data_dir: str | Path, cfg: TrainConfig, workdir: str | Path = "data", k: int | None = None,
                     fold_seed: int | None = None, new_folds: bool = False, skip_bad: bool = False,
                     device: str = "auto", progress: bool = True, group_duplicates: bool = True) -> tuple:
    """The data, the workspace bound to it, its fingerprint, the folds, and what training reads (the image cache,
    or the trunk-activation cache above a cut) built once: (data, ws, dataset_fp, folds, feed, bad rows, trunk
    cache metadata or None)."""
    entry = lookup(cfg.backbone)  # unknown names fail before any work
    model = None
    if cfg.trunk_cut is not None:
        if entry.trunk_cut is None:
            raise ValueError(f"{cfg.backbone} has no frozen trunk to cut; a trunk cut is for "
                             f"{', '.join(n for n, e in REGISTRY.items() if e.trunk_cut)}")
        model = create(cfg.backbone, cfg.img_size, pretrained=cfg.pretrained, weights=cfg.weights)
        check_cut(model, cfg.trunk_cut)
    data = CompetitionData.load(data_dir)
    ws = Workspace(workdir)
    dataset_fp = ws.bind(data)
    folds = ensure_folds(ws, data, k, fold_seed, new=new_folds, group_duplicates=group_duplicates)
    trunk = None
    if cfg.trunk_cut is None:
        images, bad = cached_images(ws, data, "train", cfg.img_size, skip_bad=skip_bad, progress=progress)
        feed: ImageFeed | TrunkFeed = ImageFeed(images, cfg.augment)
    else:
        from .trunk_cache import cached_trunk

        acts, bad, trunk = cached_trunk(ws, data, "train", model, cfg.trunk_cut,
                                        weights_identity(cfg.backbone, cfg.weights, cfg.pretrained), skip_bad,
                                        progress, resolve_device(device), cfg.trunk_views, cfg.augment, cfg.seed)
        feed = TrunkFeed(acts, cfg.trunk_cut)
    return data, ws, dataset_fp, folds, feed, bad, trunk


def train_backbone(data_dir: str | Path, cfg: TrainConfig, workdir: str | Path = "data", k: int | None = None,
                   fold: int | None = None, fold_seed: int | None = None, new_folds: bool = False,
                   skip_bad: bool = False, device: str = "auto", progress: bool = True,
                   exclude: str | Path | None = None, group_duplicates: bool = True) -> dict:
    """Fine-tune cfg.backbone on every fold (or one) of the workspace's shared K-fold split. exclude: a file of
    training ids never trained on (still predicted out of fold); group_duplicates: new folds keep the audit's
    duplicate groups together.

    Returns a summary with per-fold results and, once all folds are done, the out-of-fold accuracy.
    """
    data, ws, dataset_fp, folds, feed, bad, trunk = prepare_training(data_dir, cfg, workdir, k, fold_seed, new_folds,
                                                                     skip_bad, device, progress, group_duplicates)
    excluded = None
    if exclude is not None:
        ids = read_ids(exclude)
        excluded = exclusion_mask(data.train.ids, data.train.labels, ids, f"the exclude file {exclude}")
        cfg.exclude_fingerprint = hashlib.sha256("\n".join(sorted(set(ids))).encode()).hexdigest()[:16]
        log.info("%d training row(s) of %s are never trained on (still predicted out of fold)", int(excluded.sum()),
                 exclude)
    fold_of = folds.for_ids(data.train.ids).copy()
    fold_of[bad] = -1  # corrupt images: never trained on, never predicted
    todo = range(folds.k) if fold is None else [fold]
    if fold is not None and not 0 <= fold < folds.k:
        raise option_error(ValueError, "fold", f"{fold} is outside 0..{folds.k - 1}")
    provenance = {"dataset_fingerprint": dataset_fp, "folds_fingerprint": folds.fingerprint, "k": folds.k}
    for f in todo:
        train_fold(ws.fold_files(cfg.backbone, f), feed, data.train.labels, data.train.ids, fold_of, cfg,
                   provenance, device=device, progress=progress, excluded=excluded,
                   content_fp=ws.content_fingerprint())
    done = [ws.fold_files(cfg.backbone, f).done for f in range(folds.k)]
    results = {f: read_json(path) for f, path in enumerate(done) if path.exists()}
    summary = {"backbone": cfg.backbone, "k": folds.k, "folds": results,
               "skipped_images": [data.train.ids[i] for i in bad],
               "excluded_from_training": 0 if excluded is None else int(excluded.sum())}
    if trunk is not None:
        summary["trunk_cache"] = {"bytes": trunk["bytes"], "seconds": trunk["seconds"], "cut": cfg.trunk_cut}
    if len(results) == folds.k:
        summary["oof_accuracy"] = (sum(r["oof_accuracy"] * r["n_holdout"] for r in results.values())
                                   / sum(r["n_holdout"] for r in results.values()))
        write_json(ws.model_dir(cfg.backbone) / "summary.json", summary)
    return summary
