"""Background augmentation for detectors: swap the background, keep every box and label as it is.

    aug = DetectionBackgroundSwap(families="color,texture,other_sample", p=0.5, seed=0)
    image, target = aug(tv_tensors.Image(img), {"boxes": tv_tensors.BoundingBoxes(b, format="XYXY",
                                                 canvas_size=(H, W)), "labels": labels,
                                                 "masks": tv_tensors.Mask(instance_masks)})

The pixels are :class:`bgbias.train.augment.BackgroundSwap`'s (report 000's families, one
compositing kernel, an explicit generator); this class only finds the image and the foreground
in a detection sample (``Mask`` ``[H, W]``, ``[1, H, W]`` or per-instance ``[N, H, W]``, whose
union is the foreground) and passes everything else (``BoundingBoxes``, labels, the masks
themselves) through unchanged: changing the background never moves an object.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from torchvision import tv_tensors
from torchvision.transforms import v2

from bgbias.train.augment import BackgroundSwap


def union_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W]`` / ``[1, H, W]`` / ``[N, H, W]`` (float, bool, uint8) -> float ``[H, W]`` in [0, 1]; N = 0 -> zeros."""
    m = torch.as_tensor(mask)
    m = m.float() / 255.0 if m.dtype == torch.uint8 and m.numel() and int(m.max()) > 1 else m.float()
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim != 3 or tuple(m.shape[-2:]) != tuple(size):
        raise ValueError(f"Mask shape {tuple(mask.shape)} does not fit the image's {tuple(size)}; expected "
                         "[H, W], [1, H, W] or per-instance [N, H, W].")
    return m.amax(0) if m.shape[0] else torch.zeros(size)


class DetectionBackgroundSwap(v2.Transform):
    """Replace the background behind all instances with probability ``p`` (families as in ``BackgroundSwap``).

    Call it with a torchvision detection sample holding one ``tv_tensors.Image`` (or a ``[3, H, W]``
    plain tensor) and one ``tv_tensors.Mask``; boxes, labels and masks come back unchanged.
    Partner families (``other_sample``) use the backgrounds of earlier samples, objects filled in.
    """

    def __init__(self, families: Mapping[str, float] | Sequence[str] | str = ("color", "texture", "other_sample"),
                 p: float = 0.5, seed: int = 0, bank_size: int = 64):
        super().__init__()
        self.swap = BackgroundSwap(families, p=p, seed=seed, bank_size=bank_size)

    @property
    def seen(self) -> list[str]:
        return self.swap.seen

    def fit(self, samples: Iterable[Any]) -> "DetectionBackgroundSwap":
        """Fit ``mean``/``mean_color`` on :class:`~bgbias.core.sample.Sample` objects (e.g. ``DetSample.as_sample()``)."""
        self.swap.fit(samples)
        return self

    def forward(self, *inputs: Any) -> Any:
        flat, spec = tree_flatten(inputs if len(inputs) > 1 else inputs[0])
        img_at = next((k for k, x in enumerate(flat) if isinstance(x, tv_tensors.Image)), None)
        if img_at is None:
            img_at = next((k for k, x in enumerate(flat) if isinstance(x, torch.Tensor)
                           and not isinstance(x, tv_tensors.TVTensor) and x.ndim == 3), None)
        mask_at = next((k for k, x in enumerate(flat) if isinstance(x, tv_tensors.Mask)), None)
        if img_at is None or mask_at is None:
            raise TypeError("DetectionBackgroundSwap needs an image (tv_tensors.Image) and a tv_tensors.Mask in the "
                            f"sample, got {[type(x).__name__ for x in flat]}.")
        image = flat[img_at]
        fg = union_mask(flat[mask_at], tuple(image.shape[-2:]))
        out, _ = self.swap(image, tv_tensors.Mask(fg))
        flat[img_at] = out
        return tree_unflatten(flat, spec)

    def batch(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None
              ) -> torch.Tensor:
        """A batch ``[N, 3, H, W]`` with union masks ``[N, H, W]``: partners come from the same batch."""
        return self.swap.batch(images, masks, None, generator)
