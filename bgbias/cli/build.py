"""``bgbias build SOURCE --out OUT``: write the IN-9 layout of any source (one call to :func:`bgbias.synth.build.build`)."""
from __future__ import annotations

import os

from ._common import add_executor_option


def _source(args):
    """The source named on the command line, with given masks (--masks) or a mask method (--masks-from ...)."""
    from bgbias.cli._mask_options import source_from_args
    from bgbias.sources.base import create_source

    if args.masks:
        if getattr(args, "masks_from", None):
            raise ValueError("Give either --masks DIR (masks on disk) or --masks-from METHOD, not both.")
        return create_source(args.source, masks=args.masks)
    return source_from_args(args)


def build_command(args) -> int:
    if args.task == "detection":
        from bgbias.detect.cli_glue import build_detection_command

        return build_detection_command(args)
    import sys
    import warnings

    from bgbias.synth.build import BuildConfig, build, parse_size
    from bgbias.synth.spurious import parse_families

    config = BuildConfig(variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
                         seed=args.seed, size=parse_size(args.size), spurious=args.spurious,
                         spurious_families=parse_families(args.spurious_families),
                         spurious_groups=args.spurious_groups, holdout=args.holdout, image_format=args.image_format,
                         mask_threshold=0.5 if args.binary_masks and args.mask_threshold is None else args.mask_threshold)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        manifest = build(_source(args), args.out, config, workers=args.workers, executor=args.executor,
                         progress=not args.quiet)
    c = manifest["counts"]
    splits = ", ".join(f"{k} {n}" for k, n in manifest["splits"].items())
    print(f"wrote {len(manifest['variants'])} variants of {c['kept']} images ({splits}) to {args.out} "
          f"({c['dropped']} dropped, {c['missing_variant_images']} variant images missing; see manifest.json)")
    for row in manifest["drop_summary"]:
        print(f"  {row['count']:6d}  {row['rule']}  e.g. {row['example']}")
    for w in caught:
        print(f"bgbias: warning: {w.message}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from bgbias.sources.base import list_sources
    from bgbias.synth.spurious import DEFAULT_SPURIOUS_FAMILIES
    from bgbias.synth.variants import list_variants

    p = sub.add_parser("build", help="build IN-9-style background variants of a dataset",
                       description="Write OUT/<variant>/<split>/<NN_class>/<id>.png, OUT/fg_mask/<split>/... and "
                                   "OUT/manifest.json, split 'train' and/or 'val' (the source's own split, else "
                                   "--holdout F, else all 'val'). Rerun the same command to resume a killed build.")
    p.add_argument("source", help=f"data source: {', '.join(list_sources())} (e.g. digits, digits:64, "
                                  "mnist:DIR, folder:DIR, in9:DIR)")
    p.add_argument("--out", required=True, help="output folder (new, or a previous build of the same command)")
    p.add_argument("--variants", default="in9",
                   help="'in9' (the 8 IN-9 variants, default), 'all', or a comma list of: "
                        f"{', '.join(list_variants())}, photos:DIR")
    p.add_argument("--seed", type=int, default=0, help="seed for pairing, textures and photos (default 0)")
    p.add_argument("--size", default="none",
                   help="HxW: resize shorter side then centre crop (e.g. 224x224); 'none' keeps each image's size")
    p.add_argument("--holdout", type=float, metavar="F",
                   help="put a fraction F of each class in 'val' and the rest in 'train' (stratified, chosen from "
                        "the seed and ids) where the source has no split of its own; default: none, all 'val'")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: all cores); output bytes do not depend on it")
    add_executor_option(p, "local", "local process pool, or ray (pip install 'bgbias[ray]'); same output bytes")
    p.add_argument("--masks", metavar="DIR", help="folder:DIR only: masks with the same relative paths (.png or .npy)")
    p.add_argument("--spurious", type=float, metavar="RHO",
                   help="Waterbirds-style build: in the train split class c sits on background family c (of "
                        "--spurious-families) with probability RHO, a random other family otherwise; every other "
                        "split is group-balanced (each class on each family equally often); a build without "
                        "splits is correlated throughout; recorded per sample in the manifest")
    p.add_argument("--spurious-families", metavar="LIST",
                   help="comma list of background families for --spurious: colours, textures, or scene-photo "
                        "folders (e.g. photos:LAND_DIR,photos:WATER_DIR) "
                        f"(default: {','.join(DEFAULT_SPURIOUS_FAMILIES)})")
    p.add_argument("--spurious-groups", metavar="GROUPS",
                   help="tie groups of classes to one family each and relabel every sample to its group, "
                        "Waterbirds-style: groups split by '/', members class names or indices, NAME= optional "
                        "(e.g. low=0,1,2,3,4/high=5,6,7,8,9: group k is class k and sits on family k; unnamed "
                        "groups are named by their members joined with '+'); the original class of every sample "
                        "is kept in the manifest; default: each class its own group")
    p.add_argument("--task", choices=("classification", "detection"), default="classification",
                   help="detection: keep every instance and box, write COCO json per variant (bgbias.detect.build)")
    p.add_argument("--image-format", choices=("png", "jpeg"), default="png",
                   help="png (lossless, default) or jpeg: the IN-9 release's .JPEG files, so its official scripts "
                        "(in9_eval.py, challenge_eval.py) run on the build unchanged; JPEG adds compression artefacts "
                        "(strongest at the pasted foreground's edges) that the png build does not have")
    p.add_argument("--binary-masks", action="store_true",
                   help="binarise masks at 0.5 for every variant and fg_mask file (the official challenge script "
                        "casts masks to uint8, reading every soft value below 1 as background)")
    p.add_argument("--mask-threshold", type=float, metavar="T", help="binarise masks at T instead of 0.5")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    try:
        from bgbias.cli._mask_options import add_mask_arguments
    except ImportError:
        pass
    else:
        add_mask_arguments(p)
    p.set_defaults(func=build_command)
