"""Does bgbias preprocess timm / Hugging Face / CLIP models as the libraries do, and how fast? Real photos, CPU.

    python bench/model_kinds.py [--images 64] [--photos /work/shared/data/realmasks/images]

For each kind (a tiny random model of a real architecture, saved to a temp folder and loaded through
``bgbias``'s model kinds) this compares bgbias's batched tensor preprocessing with the library's own
per-image PIL transform (the baseline, measured in the same run): mean / max absolute difference of the
model inputs (in normalised units; one grey level is about 0.016 at std 0.25), how often the two inputs
give the same top-1 class, the largest logit difference, and the time per image of each. Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bgbias.core.io import read_image  # noqa: E402
from bgbias.models.load import load_model  # noqa: E402


def photos(folder: Path, n: int) -> list[np.ndarray]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if not files:
        raise SystemExit(f"no photos under {folder}")
    return [read_image(p) for p in files]


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def compare(name: str, lm, lib_transform, images: list[np.ndarray]) -> dict:
    from PIL import Image

    def ours():
        return torch.cat([lm.preprocess(torch.from_numpy(im.copy()).permute(2, 0, 1)[None]) for im in images])

    def theirs():
        return torch.stack([lib_transform(Image.fromarray(im)) for im in images])

    t_ours, a = timed(ours)
    t_lib, b = timed(theirs)
    with torch.no_grad():
        la, lb = lm.logits(a), lm.logits(b)
    d = (a - b).abs()
    return {"kind": name, "n": len(images), "input_mean_abs_diff": float(d.mean()), "input_max_abs_diff": float(d.max()),
            "top1_agreement": float((la.argmax(1) == lb.argmax(1)).float().mean()),
            "max_logit_diff": float((la - lb).abs().max()),
            "ms_per_image_bgbias": 1000 * t_ours / len(images), "ms_per_image_library": 1000 * t_lib / len(images)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--photos", default="/work/shared/data/realmasks/images")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = photos(Path(args.photos), args.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import timm

        net = timm.create_model("test_vit", num_classes=9)
        torch.save(net.state_dict(), tmp / "vit.pth")
        lm = load_model("timm:test_vit", weights=str(tmp / "vit.pth"))
        rows.append(compare("timm:test_vit (bicubic, crop_pct 0.95)", lm,
                            timm.data.create_transform(**timm.data.resolve_data_config({}, model=net)), images))
        net = timm.create_model("test_resnet", num_classes=9)
        torch.save(net.state_dict(), tmp / "rn.pth")
        lm = load_model("timm:test_resnet", weights=str(tmp / "rn.pth"))
        rows.append(compare("timm:test_resnet (bilinear, crop_pct 0.95)", lm,
                            timm.data.create_transform(**timm.data.resolve_data_config({}, model=net)), images))

        import transformers

        cfg = transformers.ViTConfig(image_size=224, patch_size=32, num_hidden_layers=2, hidden_size=64,
                                     num_attention_heads=2, intermediate_size=128, num_labels=9)
        transformers.ViTForImageClassification(cfg).save_pretrained(tmp / "hf")
        transformers.ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(tmp / "hf")
        lm = load_model(f"hf:{tmp / 'hf'}")
        proc = transformers.AutoImageProcessor.from_pretrained(tmp / "hf", backend="pil")
        rows.append(compare("hf: ViT image processor (PIL backend)", lm,
                            lambda im: proc(images=im, return_tensors="pt")["pixel_values"][0], images))

        import open_clip

        cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
        (tmp / "bench-clip.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp / "bench-clip.json")
        model = open_clip.create_model("bench-clip")
        torch.save(model.state_dict(), tmp / "clip.pt")
        (tmp / "p.txt").write_text("a photo of a {}.\n")
        lm = load_model(f"clip:{tmp / 'bench-clip.json'}", weights=str(tmp / "clip.pt"), prompts=str(tmp / "p.txt"),
                        class_names=[f"class {i}" for i in range(9)])
        pc = open_clip.get_model_preprocess_cfg(model)
        rows.append(compare("clip: open_clip image_transform", lm,
                            open_clip.image_transform(pc["size"], is_train=False, mean=pc["mean"], std=pc["std"],
                                                      interpolation=pc["interpolation"],
                                                      resize_mode=pc["resize_mode"]), images))
    print(f"{len(images)} photos from {args.photos}; bgbias = batched tensor preprocessing, library = its own "
          "per-image PIL transform (the baseline)")
    print(f"{'kind':<44} {'mean|d|':>8} {'max|d|':>7} {'top1 same':>9} {'max dlogit':>10} {'ms/img ours':>11} "
          f"{'ms/img lib':>10}")
    for r in rows:
        print(f"{r['kind']:<44} {r['input_mean_abs_diff']:8.4f} {r['input_max_abs_diff']:7.3f} "
              f"{100 * r['top1_agreement']:8.1f}% {r['max_logit_diff']:10.4f} {r['ms_per_image_bgbias']:11.2f} "
              f"{r['ms_per_image_library']:10.2f}")


if __name__ == "__main__":
    main()
