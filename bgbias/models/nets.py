"""Classifier architectures by name: ``small-cnn`` for 28-64 px inputs, and torchvision classifiers.

``create_arch("resnet18", num_classes=9)`` is the one call; ``list_archs()``
lists them. Checkpoints written by ``bgbias train`` store the arch name and
its kwargs so ``bgbias eval`` can rebuild the network without unpickling code.
"""
from __future__ import annotations

import torch
from torch import nn

from bgbias.core.registry import Registry

ARCHS: Registry[nn.Module] = Registry("architecture")


NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch``: BatchNorm (running statistics: needs many steps before eval mode is right);
    ``group``: GroupNorm with up to 8 groups (no running statistics: the same in train and eval,
    so a model trained for a few dozen steps on a few hundred images evaluates as it trained)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"Unknown normalisation {kind!r}; valid: {', '.join(NORMS)}.")


class SmallCNN(nn.Module):
    """VGG-style CNN (as in paper 002): 3 blocks of conv-norm-ReLU x2 + max-pool, global pool, linear.

    Works for any input >= 16 px; ~0.3M parameters at width 32. ``norm``: ``batch`` (the
    paper's, and the default of older checkpoints) or ``group`` (what ``bgbias train`` uses).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32, norm: str = "batch"):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm_layer(norm, cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2))

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@ARCHS.register("small-cnn", tags=["small"])
def small_cnn(num_classes: int = 10, width: int = 32, norm: str = "batch", **_: object) -> nn.Module:
    """VGG-style 6-conv CNN for 28-64 px inputs (paper 002's classifier family)."""
    return SmallCNN(num_classes=num_classes, width=int(width), norm=str(norm))


def _torchvision(name: str):
    def factory(num_classes: int = 1000, **kwargs: object) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=int(num_classes))

    factory.__doc__ = f"torchvision {name} (random init; load weights with --weights / pretrained file)."
    return factory


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2", "vgg16_bn", "alexnet",
              "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
              "convnext_tiny", "densenet121", "regnet_y_400mf", "vit_b_16"):
    ARCHS.register(_name, tags=["torchvision"])(_torchvision(_name))


def create_arch(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build an architecture by registry name (random init)."""
    return ARCHS.create(name, num_classes=num_classes, **kwargs)


def list_archs(pattern: str = "*") -> list[str]:
    return ARCHS.names(pattern)
