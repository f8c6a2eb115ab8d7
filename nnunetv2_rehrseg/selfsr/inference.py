"""Self-SR inference: sliding windows of thick slices over the LR axis (ends edge-replicated, so Z thick slices give
r*Z thin ones), full in-plane extent per window."""
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nnunetv2_rehrseg.degradation import back_project, noise_sigma, one_hot
from nnunetv2_rehrseg.selfsr.config import SelfSRConfig
from nnunetv2_rehrseg.selfsr.network import SelfSRNet


IN_PLANE_FLIPS = ((), (3,), (4,), (3, 4))
# the in-plane symmetries of a square: the four flips, each also with the two in-plane axes swapped
DIHEDRAL = tuple((swap, flips) for swap in (False, True) for flips in IN_PLANE_FLIPS)
TTA_TRANSFORMS = {"none": ((False, ()),), "flips": tuple((False, f) for f in IN_PLANE_FLIPS), "dihedral": DIHEDRAL}


def _apply(x: torch.Tensor, swap: bool, flips) -> torch.Tensor:
    x = x.flip(flips) if flips else x
    return x.transpose(3, 4) if swap else x


def _undo(x: torch.Tensor, swap: bool, flips) -> torch.Tensor:
    x = x.transpose(3, 4) if swap else x
    return x.flip(flips) if flips else x


def _predict_with_transforms(net: SelfSRNet, batch: torch.Tensor, transforms) -> Dict[str, torch.Tensor]:
    """Mean over in-plane symmetries (flips, axis swaps) of image, label probabilities and U: each prediction is
    mapped back before averaging."""
    total: Dict[str, torch.Tensor] = {}
    for swap, flips in transforms:
        pred = net(_apply(batch, swap, flips))
        pred = {"image": pred["image"].float(), "probabilities": torch.softmax(pred["seg"].float(), 1),
                **({"uncertainty": pred["uncertainty"].float()} if "uncertainty" in pred else {})}
        for k, v in pred.items():
            v = _undo(v, swap, flips)
            total[k] = total[k] + v if k in total else v
    return {k: v / len(transforms) for k, v in total.items()}


@torch.no_grad()
def super_resolve_volume(net: SelfSRNet, image: np.ndarray, labels: Optional[np.ndarray], device: torch.device,
                         batch_size: int = 4, tta="flips", progress: bool = False) -> Dict[str, np.ndarray]:
    """image (C, Z, Y, X) scaled to [0, 1] like the training data, labels (Z, Y, X) or None (image-only mode).

    Returns image (C, rZ, Y, X), labels (rZ, Y, X), probabilities (n_classes, rZ, Y, X) and, for a UASR network,
    uncertainty (rZ, Y, X). `tta`: "flips" averages over the four in-plane flips (4x the time), "dihedral" over
    the eight in-plane symmetries (flips, and flips with the in-plane axes swapped), "none" (or False) not at all.
    """
    transforms = TTA_TRANSFORMS[{True: "flips", False: "none"}.get(tta, tta)]
    net.eval()
    c, z, y, x = image.shape
    r, window, centre, divisor = net.r, net.window, net.centre, net.divisor
    label_maps = (np.zeros((net.num_classes, z, y, x), np.float32) if labels is None
                  else one_hot(labels, net.num_classes))
    volume = torch.from_numpy(np.concatenate([image.astype(np.float32), label_maps]))[None]
    pad_y, pad_x = -y % divisor, -x % divisor
    volume = F.pad(volume, (0, pad_x, 0, pad_y, centre, window - 1 - centre), mode="replicate")[0].to(device)
    out_image = np.zeros((c, r * z, y, x), np.float32)
    out_prob = np.zeros((net.num_classes, r * z, y, x), np.float32)
    out_u = np.zeros((r * z, y, x), np.float32) if net.use_uasr else None
    use_amp = device.type == "cuda"
    for first in tqdm(range(0, z, batch_size), desc="super-resolve", disable=not progress, leave=False):
        slices = range(first, min(first + batch_size, z))
        batch = torch.stack([volume[:, s:s + window] for s in slices])
        with torch.autocast(device.type, enabled=use_amp):
            pred = _predict_with_transforms(net, batch, transforms)
        for i, s in enumerate(slices):
            hr = slice(r * s, r * s + r)
            out_image[:, hr] = pred["image"][i, :, :, :y, :x].cpu().numpy()
            out_prob[:, hr] = pred["probabilities"][i, :, :, :y, :x].cpu().numpy()
            if out_u is not None:
                out_u[hr] = pred["uncertainty"][i, 0, :, :y, :x].cpu().numpy()
    # intensities below the input's minimum are overshoot of the residual, not anatomy
    np.clip(out_image, 0.0, None, out=out_image)
    result = {"image": out_image, "probabilities": out_prob, "labels": out_prob.argmax(0).astype(np.uint8)}
    if out_u is not None:
        result["uncertainty"] = out_u
    return result


def consistent_image(image: np.ndarray, lr_image: np.ndarray, r: int, fwhm: float, profile: str,
                     iterations: int) -> np.ndarray:
    """The pseudo-HR image (C, rZ, Y, X) corrected towards the acquired thick slices (C, Z, Y, X), both in [0, 1]
    units, with the case's slice profile (FWHM in HR voxels), no closer than the thick slices' own noise; below-zero
    overshoot clipped."""
    image = np.stack([back_project(image[c], lr_image[c], 0, r, fwhm, profile, iterations,
                                   noise_sigma(lr_image[c])) for c in range(image.shape[0])])
    return np.clip(image, 0.0, None)


@dataclass
class TrainedSelfSR:
    """A trained self-SR network with the configuration it was trained under (its use follows that configuration,
    e.g. the back-projection iterations that make its images consistent with the thick slices)."""
    network: SelfSRNet
    config: SelfSRConfig

    def super_resolve_case(self, image: np.ndarray, labels: Optional[np.ndarray], device: torch.device, fwhm: float,
                           profile: str) -> Dict[str, np.ndarray]:
        """One case's pseudo-HR data, as stage 1 writes it and rehrseg_super_resolve returns it: the network's
        output (super_resolve_volume) with the image made consistent with the case's thick slices (its slice profile
        `profile`, FWHM `fwhm` in HR voxels)."""
        result = super_resolve_volume(self.network, image, labels, device)
        result["image"] = consistent_image(result["image"], image, self.network.r, fwhm, profile,
                                           self.config.back_projection_iterations)
        return result
