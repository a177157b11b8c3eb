"""``bgbias masks SOURCE --out DIR``: write just the foreground masks (IN-9 ``fg_mask`` layout) and a quality summary."""
from __future__ import annotations

import os


def masks_command(args) -> int:
    from bgbias.cli._mask_options import source_from_args
    from bgbias.masks.run import format_summary, write_masks

    summary = write_masks(source_from_args(args), args.out, workers=args.workers)
    print(format_summary(summary))
    return 0


def register(sub) -> None:
    from bgbias.cli._mask_options import add_mask_arguments

    p = sub.add_parser("masks", help="compute foreground masks for a source and summarise their quality",
                       description="Writes OUT/fg_mask/val/<NN_class>/<id>.npy and OUT/masks.json "
                                   "(summary, per-image method/area/boxes, every drop with its rule).")
    p.add_argument("source", help="source spec, e.g. voc:DIR, imagenet:DIR, coco:ANN.json:IMAGES, folder:DIR")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they are off anyway when not on a terminal)")
    add_mask_arguments(p)
    p.set_defaults(func=masks_command)
