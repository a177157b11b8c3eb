"""CLI glue shared by ``bgbias build`` and ``bgbias masks``: the mask/annotation options and the source they name.

Not a command (the leading underscore keeps ``cli/__init__`` from registering it); the
library calls are :func:`bgbias.masks.methods.with_masks` and :func:`bgbias.sources.base.create_source`.
"""
from __future__ import annotations

from typing import Any

from bgbias.masks.methods import list_mask_methods
from bgbias.sources.masked import with_masks

ANNOTATION_FAMILIES = ("voc", "imagenet", "coco")


def add_mask_arguments(parser: Any) -> None:
    """Add the mask/annotation options (``--masks-from``, ``--boxes``, ...) to an argparse parser."""
    g = parser.add_argument_group("masks and annotations")
    g.add_argument("--masks-from", metavar="METHOD",
                   help=f"how to get foreground masks: {', '.join(list_mask_methods())} "
                        "(model:ARCH, threshold[:VALUE]); default: the source's own masks")
    g.add_argument("--boxes", metavar="FILE|DIR",
                   help="boxes: JSON {id: [[x0,y0,x1,y1],...]} (x1/y1 exclusive) or a folder of VOC XML files")
    g.add_argument("--weights", metavar="FILE", help="weights file for --masks-from model:ARCH")
    g.add_argument("--download-weights", action="store_true", default=None,
                   help="with model:ARCH and no --weights, download torchvision's default weights")
    g.add_argument("--fg-classes", metavar="LIST",
                   help="model output classes that count as foreground (indices or VOC names; default all but 0)")
    g.add_argument("--mask-device", metavar="DEVICE",
                   help="device for --masks-from model:ARCH (default: the GPU when there is one, else cpu)")
    g.add_argument("--mask-batch-size", type=int, metavar="N",
                   help="photos per forward for --masks-from model:ARCH (default 8)")
    g.add_argument("--classes", metavar="LIST", help="annotation classes to use, comma-separated, in label order")
    g.add_argument("--foreground", choices=("label", "all"), default=None,
                   help="coco: foreground is every instance of the label's category (label) or every instance (all)")
    g.add_argument("--min-area", type=int, metavar="PIXELS", help="coco: drop images whose largest instance is smaller")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--one-box", dest="box_mode", action="store_const", const="one",
                      help="IN-9 rule: keep only images with exactly one box (default for imagenet)")
    mode.add_argument("--union-boxes", dest="box_mode", action="store_const", const="union",
                      help="use the union of all boxes (default except imagenet)")
    g.add_argument("--crop-rules", dest="crop_rules", action="store_true", default=None,
                   help="IN-9 rule: drop boxes covering > 90%% of the centre crop or < 50%% inside it (imagenet default)")
    g.add_argument("--no-crop-rules", dest="crop_rules", action="store_false", help="keep boxes the crop rules would drop")
    g.add_argument("--mask-cache", metavar="DIR", help="mask cache folder (default $BGBIAS_CACHE/masks or "
                                                       "~/.cache/bgbias/masks); 'none' disables it")


def _cache_from_args(args: Any) -> Any:
    value = getattr(args, "mask_cache", None)
    return False if value == "none" else (value or True)


def _method_kwargs(args: Any) -> dict:
    spec = getattr(args, "masks_from", None) or ""
    if not spec.startswith("model"):
        return {}
    return {"weights": getattr(args, "weights", None), "fg_classes": getattr(args, "fg_classes", None),
            "download": getattr(args, "download_weights", None)}


def _set_model_device(source: Any, args: Any) -> Any:
    """Put ``--mask-device`` / ``--mask-batch-size`` on a model:ARCH method (its network is built on first use)."""
    device, batch = getattr(args, "mask_device", None), getattr(args, "mask_batch_size", None)
    if device is None and batch is None:
        return source
    method = getattr(source, "method", None)
    if method is None or method.name != "model":
        raise ValueError("--mask-device and --mask-batch-size apply only to --masks-from model:ARCH.")
    if batch is not None and batch < 1:
        raise ValueError(f"--mask-batch-size must be >= 1, got {batch}.")
    method.device = device or method.device
    method.batch_size = batch or method.batch_size
    return source


def source_from_args(args: Any, spec: str | None = None) -> Any:
    """The source named by ``spec`` (default ``args.source``) with the mask options of :func:`add_mask_arguments`.

    Annotation families (voc, imagenet, coco) take the options themselves (and reject ones
    they do not use); any other source is wrapped by :func:`with_masks` when a mask option is given.
    """
    from bgbias.sources.base import create_source
    spec = spec or args.source
    family = spec.partition(":")[0]
    opts = {k: getattr(args, k, None) for k in ("classes", "foreground", "min_area", "boxes", "box_mode",
                                                "crop_rules")}
    method = getattr(args, "masks_from", None)
    if family in ANNOTATION_FAMILIES:
        return _set_model_device(create_source(spec, **opts, masks_from=method, cache=_cache_from_args(args),
                                               **_method_kwargs(args)), args)
    for opt in ("classes", "foreground", "min_area"):
        if opts[opt] is not None:
            raise ValueError(f"--{opt.replace('_', '-')} does not apply to source {family!r}; it applies to: "
                             f"{', '.join(ANNOTATION_FAMILIES) if opt == 'classes' else 'coco'}.")
    source = create_source(spec)
    if method is None and all(opts[k] is None for k in ("boxes", "box_mode", "crop_rules")):
        return source
    fill_only = method is None and opts["boxes"] is not None   # boxes alone: keep given masks, GrabCut the rest
    return _set_model_device(with_masks(source, method or ("grabcut" if fill_only else "given"), boxes=opts["boxes"],
                                        box_mode=opts["box_mode"], crop_rules=opts["crop_rules"],
                                        cache=_cache_from_args(args), fill_only=fill_only, **_method_kwargs(args)), args)
