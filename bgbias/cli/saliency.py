"""``bgbias saliency``: share of Grad-CAM / input-gradient attribution on the foreground, with overlay PNGs."""
from __future__ import annotations

import argparse

from ._model_options import add_model_arguments, model_kwargs, split_list


def saliency_command(args: argparse.Namespace) -> int:
    from bgbias.audit.saliency import SaliencyConfig, run_saliency
    from bgbias.core.io import write_json

    kw = {k: v for k, v in dict(
        variants=split_list(args.variants), methods=split_list(args.methods) if args.methods else None,
        layer=args.layer, target=args.target, max_images=args.max_images, overlays=args.overlays,
        top_percent=args.top_percent).items() if v is not None}
    kw["variants"] = kw.get("variants")
    result = run_saliency(SaliencyConfig(**model_kwargs(args), **kw), out=args.out)
    write_json(args.out, result)
    for method, per_variant in result["methods"].items():
        for v, r in per_variant.items():
            share = "-" if r["fg_share"] is None else f"{100 * r['fg_share']:.1f}%"
            area = "-" if r["fg_area"] is None else f"{100 * r['fg_area']:.1f}%"
            extra = "".join(f", {label} {_pct(r.get(key))} (chance {_pct(r['chance'].get(key))})" for key, label in (
                ("pointing_game", "pointing game"), ("relevance_rank_accuracy", "rank acc."))) if "chance" in r else ""
            print(f"{method:<11} {v:<20} on foreground {share:>7} (foreground area {area}, n={r['n']}){extra}")
    print(f"wrote {args.out} and {len(result['overlays'])} overlays")
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def register(sub) -> None:
    from bgbias.audit.saliency_methods import DEFAULT_METHODS, SALIENCY_METHODS

    p = sub.add_parser("saliency", help="share of Grad-CAM / input-gradient attribution on the foreground mask")
    add_model_arguments(p)
    p.add_argument("--variants", default="all", help="all | comma-separated variant names or folders (e.g. original,color:red)")
    p.add_argument("--methods", default=None, help=f"comma-separated, from: {', '.join(SALIENCY_METHODS.names())} "
                                                   f"(default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--target-layer", "--layer", dest="layer", default=None,
                   help="Grad-CAM layer name (default: the last attention block's first norm for transformers, "
                        "with its tokens reshaped to the patch grid; else the last Conv2d)")
    p.add_argument("--top-percent", type=float, default=None,
                   help="iou_top: IoU of this share of the highest-attributed pixels with the mask (default 20)")
    p.add_argument("--target", choices=["label", "pred"], default=None, help="class to attribute (default: label)")
    p.add_argument("--max-images", type=int, default=None, help="images per variant (seeded subset; default 64)")
    p.add_argument("--overlays", type=int, default=None, help="overlay PNGs per variant and method (default 4)")
    p.add_argument("--out", default="saliency.json", help="result JSON to write (overlay PNGs go beside it)")
    p.set_defaults(func=saliency_command)
