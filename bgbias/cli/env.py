"""``bgbias env``: versions and devices, for bug reports."""
from __future__ import annotations

import platform


def env_command(args) -> int:
    import cv2
    import numpy
    import torch
    import torchvision

    from bgbias.core.version import __version__

    rows = {"bgbias": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "opencv": cv2.__version__, "cuda available": torch.cuda.is_available(),
            "devices": ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "cpu"}
    for k, v in rows.items():
        print(f"{k:>15}: {v}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("env", help="print versions and devices (for bug reports)")
    p.set_defaults(func=env_command)
