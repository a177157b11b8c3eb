"""Paper 002 (Cruz & Cardoso): adversarial backgrounds with an unsupervised mask generator.

Three stages, as in the paper (the ``adversarial`` recipe of :mod:`bgbias.train.loop`):

1. train the classifier f on clean images (the recipe's ``clean`` phase);
2. train a mask generator f_m (a small U-Net, sigmoid output) with f frozen so that
   ``f(x * f_m(x))`` keeps the label, plus the area prior ``L_A = max(0, A(m) - a)``, a = 0.2;
   then binarise per image: the a-quantile (``A(m >= t) = a``) or Otsu's threshold.
   ``--true-masks`` skips this and uses the data's own masks (the paper's ablation);
3. the game: a background generator f_g (noise -> ``[3, H, W]`` image) takes one step to
   *maximise* f's loss on ``compose(x, f_g(z), m)`` (plus ``L_BA = max(mean(b) - 0.5, 0)`` so
   it cannot just paint the digit's colour everywhere), then f takes one step to minimise
   it on freshly generated backgrounds (alternating updates).

What we added for generator diversity (the test backgrounds are never seen, so f must
not merely learn to ignore the generator's current favourite pattern):

- every row gets its own z, and the generator injects per-pixel noise at each scale, so
  one batch holds many different high- and low-frequency patterns;
- a replay buffer of past backgrounds (``--replay`` of them) supplies a third of each batch's
  backgrounds: f keeps resisting what fooled it earlier (the game otherwise cycles);
- backgrounds are flipped / transposed / channel-permuted at random (free diversity);
- ``--clean-fraction`` of each batch stays clean, which keeps clean accuracy at baseline level;
- ``--adv-bank`` of each batch gets a background from the bank (``--families``, default ``bank``:
  :mod:`bgbias.synth.bank`) instead of the generator: the generator finds what fools f *now*, the bank
  covers the space of plausible backgrounds it would never reach (issue 15: this is what generalises);
- the generator takes its step every ``--gen-every`` batches (it adapts slowly anyway), on the batch's
  generator rows only, and f trains on that step's own output (detached): no second generator pass, no
  backgrounds generated for rows that end up clean, replayed or from the bank. Between steps the generator
  rows are replayed. This is what keeps stage 3 near the baseline's cost per epoch (issue 15: it was 3.2x
  with a full-batch step plus a full-batch no-grad pass).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bgbias.core.compose import compose
from bgbias.core.seeding import derive_seed, torch_generator


# ------------------------------------------------------------------------------------------- networks
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MaskUNet(nn.Module):
    """f_m: ``[N, 3, H, W]`` in [0, 1] -> soft mask ``[N, 1, H, W]`` in (0, 1); two-level U-Net (~50k params)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.enc1, self.enc2, self.mid = _block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        self.dec2, self.dec1 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2, ceil_mode=True))
        mid = self.mid(F.max_pool2d(e2, 2, ceil_mode=True))
        d2 = self.dec2(torch.cat([F.interpolate(mid, size=e2.shape[-2:], mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        return torch.sigmoid(self.head(d1))


class BackgroundGenerator(nn.Module):
    """f_g: noise ``[N, z_dim]`` -> background ``[N, 3, H, W]`` in (0, 1).

    Linear to a ``H/4 x W/4`` map, two x2 upsampling conv blocks, per-pixel noise injected at every
    scale (learned strength, drawn from the caller's generator), sigmoid.
    """

    def __init__(self, size: tuple[int, int], z_dim: int = 64, width: int = 64):
        super().__init__()
        self.size, self.z_dim = tuple(size), z_dim
        self.h0, self.w0 = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
        self.fc = nn.Linear(z_dim, width * self.h0 * self.w0)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(width + 1, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(True))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(width + 1, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2),
                                 nn.ReLU(True))
        self.out = nn.Conv2d(width // 2 + 1, 3, 3, padding=1)
        self.width = width

    def forward(self, z: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n = z.shape[0]

        def noisy(h: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(n, 1, *h.shape[-2:], generator=g).to(h.device)
            return torch.cat([h, noise], 1)

        h = F.relu(self.fc(z)).view(n, self.width, self.h0, self.w0)
        h = self.up2(noisy(self.up1(noisy(h))))
        b = torch.sigmoid(self.out(noisy(h)))
        return b[..., :self.size[0], :self.size[1]]


# ------------------------------------------------------------------------------------------- stage 2
def area_prior(m: torch.Tensor, a: float) -> torch.Tensor:
    """``L_A = max(0, A(m) - a)`` per image, averaged; ``A`` = mean mask value."""
    return F.relu(m.flatten(1).mean(1) - a).mean()


def otsu_threshold(values: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Otsu's threshold per row of ``values`` ``[N, P]`` in [0, 1] -> ``[N, 1]``."""
    hist = torch.stack([torch.histc(v, bins, 0.0, 1.0) for v in values])
    p = hist / hist.sum(1, keepdim=True).clamp_min(1)
    centers = (torch.arange(bins, dtype=values.dtype) + 0.5) / bins
    w0 = p.cumsum(1)
    mu = (p * centers).cumsum(1)
    between = (mu[:, -1:] * w0 - mu) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    return (between.argmax(1, keepdim=True).to(values.dtype) + 1) / bins


def binarize(soft: torch.Tensor, method: str, a: float) -> torch.Tensor:
    """Soft masks ``[N, 1, H, W]`` -> {0, 1} float: top-``a`` share of pixels per image, or Otsu per image."""
    flat = soft.flatten(1)
    if method == "otsu":
        t = otsu_threshold(flat)
    else:
        k = max(1, int(round(a * flat.shape[1])))
        t = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= t).float().view_as(soft)


def train_mask_generator(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor,
                         norm: Callable, cfg: Any, device: torch.device, progress: bool = False) -> MaskUNet:
    """Stage 2: fit f_m with f frozen: ``CE(f(x * f_m(x)), y) + L_A(f_m(x))``."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "mask-init"))
        net = MaskUNet().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for epoch in range(cfg.mask_epochs):
            order = rows[torch.randperm(len(rows), generator=torch_generator(cfg.seed, "mask", epoch))]
            bar = tqdm(order.split(cfg.batch_size), desc=f"mask {epoch + 1}", leave=False, disable=not progress)
            for idx in bar:
                x = images[idx].to(device).float() / 255.0
                m = net(x)
                loss = F.cross_entropy(model(norm(x * m)), labels[idx].to(device)) + area_prior(m, cfg.area)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", area=f"{float(m.detach().mean()):.3f}")
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return net.eval()


@torch.no_grad()
def predict_masks(net: MaskUNet, images: torch.Tensor, method: str, a: float, device: torch.device,
                  batch_size: int = 256) -> torch.Tensor:
    """Binarised f_m masks for uint8 images ``[N, 3, H, W]`` -> uint8 ``[N, H, W]`` (255 = foreground)."""
    out = [binarize(net(images[i:i + batch_size].to(device).float() / 255.0).cpu(), method, a)
           for i in range(0, len(images), batch_size)]
    return (torch.cat(out)[:, 0] * 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------- stage 3
def _jitter(b: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random per-row flips, transpose (square images) and channel permutation of backgrounds."""
    n = b.shape[0]
    r = torch.rand(n, 3, generator=g).to(b.device)
    b = torch.where((r[:, 0] < 0.5).view(n, 1, 1, 1), b.flip(-1), b)
    b = torch.where((r[:, 1] < 0.5).view(n, 1, 1, 1), b.flip(-2), b)
    if b.shape[-1] == b.shape[-2]:
        b = torch.where((r[:, 2] < 0.5).view(n, 1, 1, 1), b.transpose(-1, -2), b)
    perm = torch.argsort(torch.rand(n, 3, generator=g), dim=1).to(b.device)
    return torch.gather(b, 1, perm.view(n, 3, 1, 1).expand_as(b))


class AdversarialBackgrounds:
    """Stage 3 as a training-step augmentation: one generator step, then the batch f trains on."""

    seen = ["adversarial"]

    def __init__(self, cfg: Any, size: tuple[int, int], norm: Callable, device: torch.device):
        self.cfg, self.norm, self.device = cfg, norm, device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "generator-init"))
            self.gen = BackgroundGenerator(size).to(device)
        self.opt = torch.optim.Adam(self.gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
        self.replay = torch.zeros(int(cfg.replay), 3, *size, dtype=torch.uint8)
        self.filled, self.pos = 0, 0
        self.mask_state: dict | None = None
        self.masks: torch.Tensor | None = None
        self.calls = 0
        self.bank = None
        if float(getattr(cfg, "adv_bank", 0.0)) > 0:
            from bgbias.synth.bank import PARTNERS, create_mixture, parse_bank

            leaves = {k: v for k, v in parse_bank(cfg.families).items() if k not in PARTNERS}
            if not leaves:
                raise ValueError(f"--adv-bank needs background families besides partners, got {cfg.families!r}.")
            self.bank = create_mixture(",".join(f"{k}={v}" for k, v in leaves.items()))

    def __call__(self, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, g: torch.Generator,
                 model: nn.Module) -> torch.Tensor:
        """The classifier's batch. Each row is clean, a bank background or a generator row; generator rows
        are fresh (the generator step's own output, so no second generator pass) or replayed.

        Only generator rows are generated, only bank rows rendered: the cost per batch is one generator
        step on about ``(1 - clean_fraction) * (1 - adv_bank) * 2/3`` of the rows every ``gen_every`` batches.
        """
        cfg, n, dev = self.cfg, x.shape[0], x.device
        self.calls += 1
        gen_step = (self.calls - 1) % max(1, int(getattr(cfg, "gen_every", 1))) == 0
        keep = torch.rand(n, generator=g) < cfg.clean_fraction
        share = float(cfg.adv_bank) if self.bank is not None else 0.0
        use_bank = ~keep & (torch.rand(n, generator=g) < share)
        gen_rows = ~keep & ~use_bank
        replayed = gen_rows & ((torch.rand(n, generator=g) < 1 / 3) | (not gen_step)) if self.filled else \
            torch.zeros(n, dtype=torch.bool)
        fresh = gen_rows & ~replayed
        b = torch.zeros(n, 3, *x.shape[-2:], device=dev)
        if fresh.any():
            rows = fresh.nonzero().flatten().to(dev)
            if gen_step:
                new = self._generator_step(x[rows], m[rows], y[rows], g, model)
            else:
                with torch.no_grad():
                    new = self._generate(len(rows), g)
            b[rows] = new
            self._remember(new)
        if replayed.any():
            rows = replayed.nonzero().flatten()
            pick = torch.randint(self.filled, (len(rows),), generator=g)
            b[rows.to(dev)] = self.replay[pick].to(dev).float() / 255.0
        with torch.no_grad():
            b = _jitter(b, g)
            if use_bank.any():
                rows = use_bank.nonzero().flatten()
                b[rows.to(dev)] = self.bank.render(len(rows), tuple(x.shape[-2:]), g, dev)
            return torch.where(keep.to(dev).view(n, 1, 1, 1), x, compose(x, b, m))

    def _generate(self, n: int, g: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.gen.z_dim, generator=g).to(self.device)
        return self.gen(z, g)

    def _generator_step(self, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, g: torch.Generator,
                        model: nn.Module) -> torch.Tensor:
        """One step of f_g to maximise f's loss (f frozen, BN in eval mode so the step has no side effects);
        returns the backgrounds it made (detached, before the update): the classifier trains on them."""
        cfg = self.cfg
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.gen.train()
        try:
            b = self._generate(x.shape[0], g)
            loss = -F.cross_entropy(model(self.norm(compose(x, b, m))), y)
            if cfg.brightness is not None:
                loss = loss + F.relu(b.mean() - cfg.brightness) * 10.0
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        finally:
            for p in model.parameters():
                p.requires_grad_(True)
        return b.detach()

    def _remember(self, b: torch.Tensor) -> None:
        """Ring buffer of past backgrounds (uint8 on the CPU)."""
        cap = self.replay.shape[0]
        if not cap:
            return
        q = (b.detach().cpu() * 255).round().to(torch.uint8)[:cap]
        idx = (torch.arange(len(q)) + self.pos) % cap
        self.replay[idx] = q
        self.pos = int((self.pos + len(q)) % cap)
        self.filled = min(cap, self.filled + len(q))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.state_dict(), "gen_opt": self.opt.state_dict(), "replay": self.replay.clone(),
                "filled": self.filled, "pos": self.pos, "mask_net": self.mask_state, "masks": self.masks,
                "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["gen_opt"])
        self.replay, self.filled, self.pos = state["replay"].clone(), int(state["filled"]), int(state["pos"])
        self.mask_state, self.masks = state.get("mask_net"), state.get("masks")
        self.calls = int(state.get("calls", 0))


def adversarial_augment(phase: str, cfg: Any, data: Any, model: nn.Module, ctx: dict) -> AdversarialBackgrounds | None:
    """The recipe hook: nothing in the ``clean`` phase; stage 2 then the stage-3 augmentation in ``adversarial``."""
    if phase == "clean":
        return None
    device, norm = ctx["device"], ctx["norm"]
    aug = AdversarialBackgrounds(cfg, tuple(data.images.shape[-2:]), norm, device)
    saved = ctx.get("extra", {}).get("augment")
    if saved is not None:
        aug.load_state_dict(saved)
    if cfg.true_masks:
        if data.masks is None:
            raise ValueError(f"--true-masks needs data with masks, but {cfg.data!r} has none.")
        return aug
    if aug.masks is None:
        net = train_mask_generator(model, data.images, data.labels, ctx["train_rows"], norm, cfg, device,
                                   ctx.get("progress", False))
        aug.mask_state = {k: v.cpu() for k, v in net.state_dict().items()}
        aug.masks = predict_masks(net, data.images, cfg.threshold, cfg.area, device)
    data.masks = aug.masks
    return aug


def mask_iou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of two masks ``[N, H, W]`` (binarised at 0.5 of their range)."""
    p = pred.float() / (255.0 if pred.dtype == torch.uint8 else 1.0) > 0.5
    t = true.float() / (255.0 if true.dtype == torch.uint8 else 1.0) > 0.5
    inter = (p & t).flatten(1).sum(1).float()
    union = (p | t).flatten(1).sum(1).float().clamp_min(1)
    return inter / union
