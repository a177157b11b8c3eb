"""``bgbias train``: train a classifier with a background-bias mitigation recipe (one call to :func:`bgbias.train.loop.train`)."""
from __future__ import annotations

import argparse
import sys
import warnings

from bgbias.train.config import OPTIMIZERS, SCHEDULES, TrainConfig


def _limit(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def train_command(args: argparse.Namespace) -> int:
    if args.task == "detection":
        from bgbias.detect.cli_glue import train_detection_command

        return train_detection_command(args)
    from bgbias.cli._common import registry_type
    from bgbias.models.nets import ARCHS
    from bgbias.train.loop import train

    args.arch = registry_type(ARCHS)(args.arch) if args.arch else TrainConfig().arch

    if getattr(args, "dfr_epochs", None) is not None:
        print("bgbias: warning: --dfr-epochs is retired and ignored: DFR refits the last layer by a convex fit after "
              "the --epochs of ERM, with no loop epochs of its own.", file=sys.stderr)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    size = args.size
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__
              and (v is not None or k == "brightness")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        metrics = train(TrainConfig(**{**fields, "families": families, "size": size}), progress=not args.quiet)
    final = ", ".join(f"{k} {v:.4f}" for k, v in metrics["final"].items() if v is not None)
    ref = metrics.get("reference")
    if ref:
        final += f"; chance {ref['chance_rate']:.4f}, majority ({ref['majority_class']}) {ref['majority_rate']:.4f}"
    print(f"wrote {args.out}/model.pt and {args.out}/metrics.json ({final})")
    for w in caught:
        print(f"bgbias: warning: {w.message}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from bgbias.cli._common import add_run_flags, registry_type, size_type
    from bgbias.models.nets import ARCHS
    from bgbias.train.config import RECIPES

    d = TrainConfig()
    p = sub.add_parser("train", help="train with a mitigation recipe (baseline, bg-augment, mixed-rand, adversarial) or a "
                            "group-robustness baseline (group_dro, jtt, dfr, reweight, subsample)",
                       description=__doc__)
    p.add_argument("--recipe", required=True, type=registry_type(RECIPES), metavar="NAME",
                   help=f"mitigation recipe: {', '.join(RECIPES.names())} ('-' or '_' alike)")
    p.add_argument("--data", required=True,
                   help="a build dir (trains on its 'train' split, validates on 'val'; build with --holdout F) "
                        "or a source spec (digits, mnist:DIR, folder:DIR, in9:DIR) split by --val-fraction")
    p.add_argument("--out", required=True, help="run folder: model.pt, last.pt, metrics.json")
    p.add_argument("--arch", metavar="NAME",
                   help=f"architecture: {', '.join(ARCHS.names())} (default {d.arch}); with --task detection: "
                        "tiny_centernet (default), tiny_frcnn or a torchvision detection arch")
    p.add_argument("--task", choices=("classification", "detection"), default="classification",
                   help="detection: fine-tune a detector on a detection build (recipes baseline, bg-augment)")
    p.add_argument("--pretrained", metavar="FILE",
                   help="fine-tune from local weights: a state dict (e.g. torchvision's resnet18-*.pth for "
                        "--arch resnet18) or a bgbias checkpoint; read with weights_only, the head is re-initialised")
    p.add_argument("--norm", default=d.norm, choices=["group", "batch"],
                   help="small-cnn normalisation: batch (BatchNorm) or group (GroupNorm, no running statistics)")
    p.add_argument("--min-steps", type=int, default=d.min_steps,
                   help="at least this many optimiser steps: small sets get smaller batches (down to 16) and "
                        "several passes per epoch (0 = off)")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="training epochs (dfr: the ERM epochs; its last layer is then refitted once by L1 logistic "
                        "regression on the group-balanced held-out rows, a convex fit with no epochs of its own)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per optimizer step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="optimizer")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="learning-rate schedule")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for initialisation, batches and augmentation")
    p.add_argument("--device", default=d.device, help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--size", type=size_type, metavar="HxW", help="resize inputs to HxW, e.g. 64x64 (default: keep)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="source specs only: the share held out for validation; a build dir trains on its "
                        "'train' split and validates on 'val'")
    p.add_argument("--families", default=",".join(d.families),
                   help="bg-augment backgrounds, FAMILY[=WEIGHT],...: bank (default), texture (= texture:*: every texture, "
                        "random parameters), texture:NAME[:param] (fixed), texture:NAME:* (random), noise[:smooth|fractal|pixel], gradient, color:random, color:<c>, mean, "
                        "mean_color, photos:DIR (random crops), other_sample, same_class, next_class; e.g. "
                        "'bank,photos:DIR=0.5'")
    p.add_argument("--p", type=float, default=d.p, help="bg-augment: probability a background is swapped")
    p.add_argument("--true-masks", action="store_true", help="adversarial: use the data's masks, not f_m")
    p.add_argument("--clean-epochs", type=int, help="adversarial stage 1 epochs (default: --epochs)")
    p.add_argument("--mask-epochs", type=int, default=d.mask_epochs, help="adversarial stage 2 epochs")
    p.add_argument("--area", type=float, default=d.area, help="adversarial: area prior a")
    p.add_argument("--threshold", default=d.threshold, choices=["quantile", "otsu"],
                   help="adversarial: how f_m's soft mask is cut (quantile: area a; otsu)")
    p.add_argument("--clean-fraction", type=float, default=d.clean_fraction,
                   help="adversarial: share of each batch left clean")
    p.add_argument("--brightness", type=_limit, default=d.brightness,
                   help="adversarial: L_BA limit on the mean background brightness, or 'none'")
    p.add_argument("--replay", type=int, default=d.replay, help="adversarial: past backgrounds kept for replay")
    p.add_argument("--adv-bank", type=float, default=d.adv_bank,
                   help=f"adversarial: share of the non-clean rows whose background comes from --families' bank "
                        f"instead of the generator (default {d.adv_bank}; 0 = generator only)")
    p.add_argument("--gen-every", type=int, default=d.gen_every,
                   help=f"adversarial: one background-generator step every N batches (default {d.gen_every})")
    p.add_argument("--dro-eta", type=float, default=d.dro_eta,
                   help=f"group_dro: step size of the online group weights (default {d.dro_eta})")
    p.add_argument("--dro-weight-decay", type=float, default=d.dro_weight_decay,
                   help=f"group_dro: the strong L2 it needs (default {d.dro_weight_decay})")
    p.add_argument("--jtt-epochs", type=int, default=d.jtt_epochs,
                   help=f"jtt: epochs of the identification model (default {d.jtt_epochs})")
    p.add_argument("--jtt-up", type=int, default=d.jtt_up,
                   help=f"jtt: each training error appears this many times when retraining (default {d.jtt_up})")
    p.add_argument("--dfr-epochs", type=int, help=argparse.SUPPRESS)   # retired: warned about and ignored
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_run_flags(p)
    p.set_defaults(func=train_command)
