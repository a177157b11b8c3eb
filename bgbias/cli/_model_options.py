"""Options shared by ``bgbias eval``, ``challenge`` and ``saliency``: the model, its preprocessing, the data, the device.

No ``register`` here (and a leading underscore, which ``cli/__init__.py`` skips): this is not a command.
"""
from __future__ import annotations

import argparse
from typing import Any

from bgbias.cli._common import add_run_flags, size_type
from bgbias.models.labelmap import BUILTIN
from bgbias.models.load import PRESETS


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Add the shared options; each command's own options come after them in ``--help``."""
    p.add_argument("--model", required=True,
                   help="torchvision:<arch> | torchscript:FILE | checkpoint:FILE | module:pkg.mod:factory | "
                        "timm:<name> | hf:<dir or hub id> | clip:<arch>[:<tag>] (zero-shot on the data's classes)")
    p.add_argument("--weights", help="weights file: state dict (torchvision:, module:, timm:), open_clip checkpoint "
                                     "(clip:); .safetensors or torch.save files")
    p.add_argument("--download-weights", action="store_true",
                   help="timm:/hf:/clip: may download pretrained weights (default: offline, local cache only)")
    p.add_argument("--prompts", metavar="FILE",
                   help="clip: prompt templates, one per line with {} for the class name (default: the 80 "
                        "OpenAI ImageNet templates)")
    p.add_argument("--label-map", default=None,
                   help=f"{' | '.join(BUILTIN)} | FILE.json (model class -> dataset class, -1 = none); default: "
                        "identity, by-name when the model's class names contain the data's, imagenet-to-in9 for a "
                        "1000-class model on IN-9 (printed)")
    p.add_argument("--data", required=True, help="IN-9 layout folder (bgbias build output or the IN-9 release)")
    p.add_argument("--split", default="val",
                   help="which split of the layout to read: val (default; held out from training) or train")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward (default: the command's own)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers that decode images (default 0)")
    p.add_argument("--preprocess", choices=sorted(PRESETS), default=None,
                   help="imagenet (224 px, ImageNet stats) | in9 (IN-9 stats) | none ([0,1], no resize); "
                        "default: the model's own (checkpoint meta, timm data config, HF image processor, CLIP "
                        "transforms), imagenet for torchvision:, else none")
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="normalisation mean (default: from --preprocess)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="normalisation std (default: from --preprocess)")
    p.add_argument("--size", type=size_type, default=None, metavar="HxW",
                   help="resize to HxW before the model, e.g. 224x224 (default: from --preprocess)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary Python objects (only for files you trust)")
    p.add_argument("--seed", type=int, default=0, help="seed for bootstrap intervals and subsets")
    add_run_flags(p)
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)   # old spelling


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields (``EvalConfig``/``ChallengeConfig``/``SaliencyConfig``) from the shared options; unset
    options are dropped so each config's own defaults apply (batch size differs per command)."""
    kw = dict(model=args.model, data=args.data, weights=args.weights, label_map=args.label_map, device=args.device,
              batch_size=args.batch_size, workers=args.workers, preprocess=args.preprocess,
              mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
              size=tuple(args.size) if args.size else None, trust=args.trust_checkpoint, seed=args.seed,
              download_weights=args.download_weights or None, prompts=args.prompts,
              progress=not args.quiet, split=args.split)
    return {k: v for k, v in kw.items() if v is not None}


def split_list(text: str | None) -> tuple[str, ...] | None:
    """``"a, b,"`` -> ("a", "b"); ``None`` or ``"all"`` -> None (everything)."""
    if text is None or text.strip() == "all":
        return None
    return tuple(x.strip() for x in text.split(",") if x.strip())
