"""Multi-slice self-SR network (FLAVR-style 3D encoder-decoder over a window of thick slices) with a plain head
and an uncertainty-aware (UASR) mixture head.

Input  (B, C_img + n_classes, window, H, W): a window of thick slices [s-1, s, s+1, s+2], image channels first,
       then the one-hot labels (all zeros when the labels are unknown).
Output the r thin sub-slices of slice s: image (B, C_img, r, H, W), label logits (B, n_classes, r, H, W) and, for
       the UASR head, an uncertainty map U in (0, 1) of shape (B, 1, r, H, W). The image is a residual to the window
       interpolated linearly at the sub-slice centres; with `label_residual` the label logits are too (a learned
       scale times the interpolated one-hot input labels, plus the head's output).
The frame axis is never pooled, so the encoder also runs on a whole LR patch (any number of slices): that is how
stage 2 reads its features for distillation.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn


# initial logit scale of the interpolated one-hot input labels: a larger scale holds the output labels at the
# annotation for longer, which costs Dice at short budgets and nothing at long ones (benchmarks/pseudo_labels.py and
# benchmarks/selfsr.py compare scales)
LABEL_PRIOR_INIT = 1.0


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


class SqueezeExcite3d(nn.Module):
    """Channel gating as in FLAVR's gated R3D blocks."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4), keepdim=True)))


class ResidualBlock3d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.gate = SqueezeExcite3d(channels)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.gate(self.conv2(self.act(self.conv1(x)))))


class EncoderStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, downsample: bool, num_blocks: int):
        super().__init__()
        stride = (1, 2, 2) if downsample else 1
        self.entry = nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1), _act())
        self.blocks = nn.Sequential(*[ResidualBlock3d(out_channels) for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.entry(x))


class DecoderStage(nn.Module):
    def __init__(self, deep_channels: int, skip_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose3d(deep_channels, skip_channels, (1, 2, 2), stride=(1, 2, 2))
        self.fuse = nn.Sequential(nn.Conv3d(2 * skip_channels, skip_channels, 3, padding=1), _act())

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(deep), skip], dim=1))


class PlainHead(nn.Module):
    """One prediction per sub-slice."""

    def __init__(self, in_features: int, r: int, out_channels: int):
        super().__init__()
        self.r, self.out_channels = r, out_channels
        self.conv = nn.Conv2d(in_features, r * out_channels, 1)

    def forward(self, fused: torch.Tensor) -> Dict[str, torch.Tensor]:
        b, _, h, w = fused.shape
        out = self.conv(fused).view(b, self.r, self.out_channels, h, w).transpose(1, 2)
        return {"residual": out, "weights": None}


class UASRHead(nn.Module):
    """K hypotheses mixed by softmax weights; U = sigmoid(1x1 conv of the weights).

    Image hypotheses are residuals to the interpolated window (not tanh-bounded as in R2, which bounds absolute
    [0, 1] intensities); label hypotheses are logits.
    """

    def __init__(self, in_features: int, r: int, out_channels: int, hypotheses: int):
        super().__init__()
        self.r, self.out_channels, self.k = r, out_channels, hypotheses
        self.hypotheses = nn.Conv2d(in_features, r * hypotheses * out_channels, 1)
        self.mixture = nn.Conv2d(in_features, r * hypotheses, 1)
        self.uncertainty = nn.Conv2d(hypotheses, 1, 1)

    def forward(self, fused: torch.Tensor) -> Dict[str, torch.Tensor]:
        b, _, h, w = fused.shape
        hyp = self.hypotheses(fused).view(b, self.r, self.k, self.out_channels, h, w)
        weights = torch.softmax(self.mixture(fused).view(b, self.r, self.k, h, w).float(), dim=2).to(hyp.dtype)
        mixed = (weights.unsqueeze(3) * hyp).sum(dim=2).transpose(1, 2)  # (B, C, r, H, W)
        u = torch.sigmoid(self.uncertainty(weights.reshape(b * self.r, self.k, h, w)))
        return {"residual": mixed, "weights": weights, "uncertainty": u.view(b, self.r, h, w).unsqueeze(1)}

    @torch.no_grad()
    def init_from_plain(self, plain: PlainHead, error_level: float) -> None:
        """Every hypothesis starts as the trained plain head, so the UASR phase starts from the plain model's output
        (the mixture of identical hypotheses equals each of them) instead of from a random head; U starts at the
        plain model's mean error instead of sigmoid(0) = 0.5, which Adam's bounded steps would take thousands of
        iterations to leave."""
        weight = plain.conv.weight.view(self.r, 1, self.out_channels, -1, 1, 1)
        bias = plain.conv.bias.view(self.r, 1, self.out_channels)
        self.hypotheses.weight.copy_(weight.expand(-1, self.k, -1, -1, -1, -1).reshape_as(self.hypotheses.weight))
        self.hypotheses.bias.copy_(bias.expand(-1, self.k, -1).reshape_as(self.hypotheses.bias))
        # small differences between hypotheses let the mixture weights matter
        self.hypotheses.weight.add_(1e-3 * torch.randn_like(self.hypotheses.weight))
        level = min(max(error_level, 1e-4), 0.5)
        self.uncertainty.weight.zero_()
        self.uncertainty.bias.fill_(float(torch.logit(torch.tensor(level))))


class SelfSRNet(nn.Module):
    def __init__(self, image_channels: int, num_classes: int, r: int, window: int = 4,
                 features: Sequence[int] = (32, 64, 128), blocks_per_stage: int = 1, fused_features: int = 128,
                 hypotheses: int = 16, uasr: bool = True, label_residual: bool = False):
        super().__init__()
        if window < 2:
            raise ValueError("the SR window needs at least 2 slices")
        self.image_channels, self.num_classes, self.r, self.window = image_channels, num_classes, r, window
        self.centre = (window - 1) // 2
        self.features = tuple(features)
        self.divisor = 2 ** (len(features) - 1)
        in_channels = image_channels + num_classes
        self.encoder = nn.ModuleList(
            EncoderStage(in_channels if i == 0 else features[i - 1], f, i > 0, blocks_per_stage)
            for i, f in enumerate(features))
        self.decoder = nn.ModuleList(
            DecoderStage(features[i + 1], features[i]) for i in reversed(range(len(features) - 1)))
        self.fuse = nn.Sequential(nn.Conv2d(features[0] * window, fused_features, 3, padding=1), _act())
        out_channels = image_channels + num_classes
        self.plain_head = PlainHead(fused_features, r, out_channels)
        self.uasr_head = UASRHead(fused_features, r, out_channels, hypotheses)
        self.use_uasr = uasr
        # linear interpolation of the window at the sub-slice centres: the image is predicted as a residual to it
        positions = self.centre + (torch.arange(r, dtype=torch.float32) - (r - 1) / 2.0) / r
        lower = positions.floor().long().clamp(0, window - 2)
        frac = positions - lower
        interp = torch.zeros(r, window, dtype=torch.float32)   # float32 like the positions, whatever the default
        interp[torch.arange(r), lower] = 1 - frac
        interp[torch.arange(r), lower + 1] = frac
        self.register_buffer("interp", interp, persistent=False)
        # label logits as a correction to the input labels linearly interpolated like the image (a learned scale):
        # the network only has to learn where the thin slices differ from the thick ones
        self.label_prior = nn.Parameter(torch.tensor(LABEL_PRIOR_INIT)) if label_residual else None

    def encode(self, x: torch.Tensor, stages: Optional[int] = None) -> List[torch.Tensor]:
        """Encoder features per stage, (B, F_i, frames, H / 2^i, W / 2^i); of the first `stages` stages if given (a
        distillation teacher needs one stage, not the deeper ones)."""
        skips = []
        for stage in self.encoder[:stages]:
            x = stage(x)
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        b, _, frames, h, w = x.shape
        if frames != self.window or h % self.divisor or w % self.divisor:
            raise ValueError(f"input of {frames} frames, {h}x{w}: expected {self.window} frames and in-plane sizes "
                             f"divisible by {self.divisor}")
        skips = self.encode(x)
        y = skips[-1]
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            y = stage(y, skip)
        fused = self.fuse(y.reshape(b, -1, h, w))
        head = self.uasr_head if self.use_uasr else self.plain_head
        out = head(fused)
        residual = out["residual"]
        base = torch.einsum("tf,bcfhw->bcthw", self.interp.to(x.dtype), x)
        seg = residual[:, self.image_channels:]
        if self.label_prior is not None:
            seg = seg + self.label_prior * base[:, self.image_channels:]
        result = {"image": base[:, :self.image_channels] + residual[:, :self.image_channels], "seg": seg}
        if self.use_uasr:
            result["uncertainty"] = out["uncertainty"]
        return result
