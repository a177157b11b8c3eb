"""Are a build's masks soft? The official challenge script reads them differently then (it casts to uint8).

bgbias blends with soft masks everywhere (``out = m*fg + (1-m)*bg``, the same as
its ``mixed_*`` images); MadryLab's ``challenge_eval.py`` casts each mask to
uint8, which floors every value below 1 to background, so on soft masks it
measures a thinner foreground (on 270 digits: 157 vs 99 foregrounds fooled).
``bgbias build --binary-masks`` writes masks both read alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def check_masks(paths: Sequence[Path], limit: int = 64) -> dict:
    """``{"checked", "soft", "warning"}``: how many of up to ``limit`` evenly spaced masks hold values in (0, 1)."""
    if not paths:
        return {"checked": 0, "soft": 0, "warning": None}
    step = max(1, len(paths) // limit)
    picked = list(paths)[::step][:limit]
    soft = 0
    for p in picked:
        try:
            m = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            continue                                  # unreadable masks are skipped and named by the search
        if np.any((m > 1e-6) & (m < 1 - 1e-6)):
            soft += 1
    warning = None
    if soft:
        warning = (f"{soft} of {len(picked)} checked masks are soft (values between 0 and 1): bgbias blends them, "
                   "but the official challenge_eval.py casts masks to uint8 and would measure a thinner foreground; "
                   "rebuild with --binary-masks to compare with it.")
    return {"checked": len(picked), "soft": soft, "warning": warning}
