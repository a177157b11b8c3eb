"""Attribution methods (a registry) and the Grad-CAM target layer, chosen for CNNs and transformers alike.

Every method maps ``(module, x, targets, target)`` to float ``[N, H, W] >= 0``
maps at the input size. ``gradcam`` (Selvaraju et al.) weights a layer's
channels by their mean gradient: ``ReLU(sum_c mean(dA_c) * A_c)``, upsampled
bilinearly. For a CNN the layer is the last ``nn.Conv2d``. For a transformer
(timm ViT/DeiT/Swin, Hugging Face ViT/Swin, CLIP image towers) it is the first
norm of the last attention block, as in pytorch-grad-cam's ViT recipe, and its
tokens are reshaped to their patch grid: prefix tokens (class, distillation,
registers) dropped, ``[N, L, D] -> [N, D, h, w]``, channels-last ``[N, h, w, C]``
(timm Swin) permuted. ``--target-layer NAME`` overrides the choice; the reshape
follows the layer's output. Input-gradient methods (captum) work for any model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bgbias.core.registry import Registry

SaliencyFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "Target | None"], torch.Tensor]
SALIENCY_METHODS: Registry[torch.Tensor] = Registry("saliency method")
DEFAULT_METHODS = ("gradcam", "input_grad")


@dataclass(frozen=True)
class Target:
    """A Grad-CAM layer: its name, the module, and how its output becomes ``[N, C, h, w]``."""

    name: str
    module: nn.Module
    channels: int | None = None     # a LayerNorm's width: a 4-D output with it last is channels-last


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention")


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) or ("Norm" in type(m).__name__ and not isinstance(m, nn.modules.batchnorm._BatchNorm))


def last_attention_block(module: nn.Module) -> tuple[str, nn.Module] | None:
    """The last block of the last container of attention blocks (``blocks``, ``resblocks``, ``layer``, ...)."""
    found = None
    for name, m in module.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m):
            last = m[-1]
            if not _is_attention(last) and any(_is_attention(x) for x in last.modules()) \
                    and any(_is_norm(x) for x in last.modules()):
                found = (f"{name}.{len(m) - 1}" if name else str(len(m) - 1), last)
    return found


def _channels(m: nn.Module) -> int | None:
    """A LayerNorm normalises the last dim: its width tells a channels-last 4-D output from NCHW."""
    shape = getattr(m, "normalized_shape", None)
    return int(shape[-1]) if isinstance(m, nn.LayerNorm) and shape else None


def find_target(module: nn.Module, name: str | None) -> Target:
    """The named layer, else the first norm of the last attention block (transformers), else the last Conv2d
    outside residual shortcuts (``downsample``, ``shortcut``: registered after the main path in ResNets)."""
    named = dict(module.named_modules())
    convs = [n for n, m in named.items() if isinstance(m, nn.Conv2d)]
    if name is not None:
        if name not in named:
            raise ValueError(f"Unknown layer {name!r}; valid conv layers: {', '.join(convs[-5:]) or 'none'} "
                             "(or any module name of the model).")
        return Target(name, named[name], _channels(named[name]))
    block = last_attention_block(module)
    if block is not None:
        bname, b = block
        inner = [sub + "." for sub, m in b.named_modules() if sub and _is_attention(m)]
        for sub, m in b.named_modules():
            if sub and _is_norm(m) and not any(sub.startswith(a) for a in inner):
                return Target(f"{bname}.{sub}", m, _channels(m))
    if not convs:
        raise ValueError("The model has no nn.Conv2d layer for Grad-CAM; pass --layer NAME or use input_grad only.")
    main = [n for n in convs if not any(p in n.split(".") or p in n for p in _SHORTCUTS)] or convs
    return Target(main[-1], named[main[-1]])


_SHORTCUTS = ("downsample", "shortcut", "skip")   # residual-branch convs registered after a block's main path


def prefix_tokens(module: nn.Module) -> int | None:
    """Class/distillation/register tokens before the patch tokens, when the model says (timm, open_clip)."""
    for m in module.modules():
        n = getattr(m, "num_prefix_tokens", None)
        if isinstance(n, int):
            return n
        if getattr(m, "class_embedding", None) is not None and hasattr(m, "positional_embedding"):
            return 1
    return None


def to_grid(act: torch.Tensor, batch: int, in_hw: tuple[int, int], channels: int | None = None,
            prefix: int | None = None) -> torch.Tensor:
    """A layer output as ``[N, C, h, w]``: tokens to their patch grid (prefix tokens dropped), NHWC permuted."""
    if act.ndim == 4:
        if channels is not None and act.shape[-1] == channels and act.shape[1] != channels:
            return act.permute(0, 3, 1, 2)
        return act
    if act.ndim != 3:
        raise ValueError(f"Grad-CAM layer output has shape {tuple(act.shape)}; expected [N, C, h, w] or tokens "
                         "[N, L, D]; pick another --target-layer.")
    if act.shape[0] != batch and act.shape[1] == batch:        # sequence-first transformers ([L, N, D])
        act = act.transpose(0, 1)
    length, h, w = act.shape[1], in_hw[0], in_hw[1]
    for k in ([prefix] if prefix is not None else range(0, min(length, 9))):
        gw = math.isqrt(round((length - k) * w / h)) if length > k else 0
        gh = (length - k) // gw if gw else 0
        if gw and gh * gw == length - k and abs(gh / gw - h / w) < 0.2:
            return act[:, k:].reshape(act.shape[0], gh, gw, act.shape[2]).permute(0, 3, 1, 2)
    raise ValueError(f"Cannot reshape {length} tokens into a patch grid for a {h}x{w} input; "
                     "pick a --target-layer with a spatial output.")


@SALIENCY_METHODS.register("gradcam", tags=["layer"])
def gradcam(module: nn.Module, x: torch.Tensor, targets: torch.Tensor, target: Target | None) -> torch.Tensor:
    """Grad-CAM on the target layer (token grids reshaped), upsampled bilinearly to the input."""
    if target is None:
        raise ValueError("gradcam needs a target layer.")
    saved: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        saved.append(out[0] if isinstance(out, (tuple, list)) else out)

    handle = target.module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            out = module(xg)
            out = out[0] if isinstance(out, (tuple, list)) else out
            act = saved[-1]
            grad, = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), act)
    finally:
        handle.remove()
    prefix = prefix_tokens(module) if act.ndim == 3 else None
    hw = tuple(x.shape[-2:])
    a, g = (to_grid(t.detach(), x.shape[0], hw, target.channels, prefix) for t in (act, grad))
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    return F.interpolate(cam.float(), size=hw, mode="bilinear")[:, 0]


@SALIENCY_METHODS.register("input_grad")
def input_grad(module: nn.Module, x: torch.Tensor, targets: torch.Tensor, target: Target | None) -> torch.Tensor:
    """Absolute input gradients summed over channels (captum ``Saliency``; Simonyan et al.)."""
    from captum.attr import Saliency

    return Saliency(module).attribute(x.clone().requires_grad_(True), target=targets, abs=True).sum(1).detach()


@SALIENCY_METHODS.register("grad_x_input")
def grad_x_input(module: nn.Module, x: torch.Tensor, targets: torch.Tensor, target: Target | None) -> torch.Tensor:
    """|gradient x input| summed over channels (captum ``InputXGradient``), on the normalised input."""
    from captum.attr import InputXGradient

    return InputXGradient(module).attribute(x.clone().requires_grad_(True), target=targets).abs().sum(1).detach()


@SALIENCY_METHODS.register("integrated_gradients")
def integrated_gradients(module: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                         target: Target | None) -> torch.Tensor:
    """|Integrated gradients| from a zero (dataset-mean after normalisation) baseline, 16 steps, summed over channels."""
    from captum.attr import IntegratedGradients

    a = IntegratedGradients(module).attribute(x.clone().requires_grad_(True), target=targets, n_steps=16,
                                              internal_batch_size=max(1, x.shape[0]) * 4)
    return a.abs().sum(1).detach()


def attribute(method: str, module: nn.Module, x: torch.Tensor, targets: torch.Tensor,
              target: Target | None) -> torch.Tensor:
    """float ``[N, H, W]`` >= 0 attribution maps at the input size."""
    fn = SALIENCY_METHODS.entry(method).factory
    return fn(module, x, targets, target)
