"""The detection halves of ``bgbias build`` and ``bgbias train`` (``--task detection``): parsed options -> one library call.

Kept here, not in ``cli/``, so the shared command files only dispatch (a two-line ``if``);
the options themselves are the commands' own (``--variants``, ``--seed``, ``--epochs``, ...).
"""
from __future__ import annotations

import argparse

from bgbias.detect.build import REPORT000, DetBuildConfig, build_detection
from bgbias.detect.data import create_det_source


def build_detection_command(args: argparse.Namespace) -> int:
    if getattr(args, "size", "none") not in (None, "none"):
        raise ValueError("Detection builds keep each image's size (so every box stays as annotated); drop --size.")
    variants = args.variants
    if variants in ("in9", "all"):   # the classification default: use report 000's backgrounds instead
        variants = ",".join(REPORT000 + ("only_bg", "mixed_rand"))
    source = create_det_source(args.source, classes=getattr(args, "classes", None), seed=args.seed)
    manifest = build_detection(source, args.out, DetBuildConfig(tuple(v for v in variants.split(",") if v.strip()),
                                                                args.seed), progress=not args.quiet,
                                workers=getattr(args, "workers", 1), executor=getattr(args, "executor", "local"))
    c = manifest["counts"]
    print(f"wrote {len(manifest['variants'])} detection variants of {c['kept']} images ({c['annotations']} "
          f"annotations) to {args.out} ({c['dropped']} dropped, {c['missing_variant_images']} variant images "
          "missing; see manifest.json)")
    for reason, k in c["by_reason"].items():
        print(f"  {k:6d}  {reason}")
    return 0 if c["kept"] else 1


def train_detection_command(args: argparse.Namespace) -> int:
    from bgbias.detect.train import DetTrainConfig, train_detector

    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    config = DetTrainConfig(data=args.data, out=args.out, recipe=args.recipe, arch=args.arch or "tiny_centernet",
                            pretrained=args.pretrained, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            optimizer=args.optimizer if args.optimizer in ("sgd", "adamw") else "sgd",
                            weight_decay=args.weight_decay, families=families, p=args.p, seed=args.seed,
                            device=args.device)
    metrics = train_detector(config, progress=not args.quiet)
    print(f"wrote {args.out}/model.pt and {args.out}/metrics.json (final loss {metrics['final']['loss']:.4f}, "
          f"{metrics['meta']['steps']} steps)")
    return 0
