"""Slice profiles and the thick-slice degradation model.

One grid convention everywhere (same field of view): LR slice k covers HR slices r*k .. r*k+r-1 and its centre
lies at HR index c_k = r*k + (r-1)/2. Degradation is LR_k = sum_j h(j - c_k) HR_j, so the profile h is sampled at
offsets i - (r-1)/2 (half-integers for even r). A phase is an integer shift of the HR data, never an off-centre
kernel. LR labels follow the annotator model: per-voxel majority over the r HR sub-slices.
"""
from functools import lru_cache
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
SLICE_PROFILES = ("gaussian", "rf-pulse-slr")


def profile_fwhm_in_voxels(slice_thickness: float, target_spacing: float, hr_slice_thickness: float = 0.0) -> float:
    """FWHM of the slice profile in HR voxels.

    The slice thickness is the FWHM of the excitation profile. When the HR data already carries a profile of its
    own (thickness `hr_slice_thickness`), only the extra blur sqrt(t^2 - t_hr^2) is applied.
    """
    if slice_thickness <= 0 or target_spacing <= 0:
        raise ValueError(f"slice thickness ({slice_thickness}) and target spacing ({target_spacing}) must be > 0")
    if hr_slice_thickness >= slice_thickness:
        raise ValueError(f"HR slice thickness {hr_slice_thickness} must be smaller than {slice_thickness}")
    return float(np.sqrt(slice_thickness ** 2 - hr_slice_thickness ** 2) / target_spacing)


def gaussian_profile(offsets: np.ndarray, fwhm: float) -> np.ndarray:
    sigma = fwhm / FWHM_PER_SIGMA
    return np.exp(-0.5 * (offsets / sigma) ** 2)


@lru_cache(maxsize=4)
def _slr_profile_unit_fwhm(time_bandwidth: float = 16.0, n_samples: int = 128) -> Tuple[np.ndarray, np.ndarray]:
    """|Mxy| of an SLR excitation pulse (sigpy design + Bloch simulation), positions scaled to FWHM = 1."""
    import sigpy.mri.rf as rf

    pulse = rf.dzrf(n=n_samples, tb=time_bandwidth, ptype="ex", ftype="ls", d1=0.01, d2=0.01)
    positions = np.linspace(-2.0 * time_bandwidth, 2.0 * time_bandwidth, 4001)
    alpha, beta = rf.sim.abrm(pulse, positions)
    magnitude = np.abs(2 * np.conj(alpha) * beta)
    magnitude = magnitude / magnitude.max()
    above = positions[magnitude >= 0.5]
    return positions / (above.max() - above.min()), magnitude


def slr_profile(offsets: np.ndarray, fwhm: float) -> np.ndarray:
    positions, magnitude = _slr_profile_unit_fwhm()
    return np.interp(offsets / fwhm, positions, magnitude, left=0.0, right=0.0)


def slice_kernel(r: int, fwhm: float, profile: str = "gaussian") -> Tuple[np.ndarray, int]:
    """Weights w_i = h(i - (r-1)/2), normalised to sum 1, and the first index i_min.

    LR_k = sum_i w_i HR_{r*k + i_min + i}; the support is symmetric about the slice centre, so a linear ramp is
    reproduced exactly at c_k.
    """
    if r < 1:
        raise ValueError(f"scale r must be >= 1, got {r}")
    if profile not in SLICE_PROFILES:
        raise ValueError(f"unknown slice profile '{profile}', choose one of {SLICE_PROFILES}")
    centre = (r - 1) / 2.0
    half_support = max(1.5 * fwhm, r / 2.0)
    i_min = int(np.ceil(centre - half_support))
    i_max = int(np.floor(centre + half_support))
    # make the support symmetric about the centre: i_min + i_max == r - 1
    i_min = min(i_min, r - 1 - i_max)
    i_max = r - 1 - i_min
    indices = np.arange(i_min, i_max + 1)
    profile_fn = gaussian_profile if profile == "gaussian" else slr_profile
    weights = profile_fn(indices - centre, fwhm)
    if weights.sum() <= 0:
        raise ValueError(f"slice profile '{profile}' with FWHM {fwhm} has no support")
    return (weights / weights.sum()).astype(np.float32), i_min


def blur_subsample(hr: Union[np.ndarray, torch.Tensor], axis: int, r: int, fwhm: float,
                   profile: str = "gaussian", phase: int = 0) -> Union[np.ndarray, torch.Tensor]:
    """Thick slices from thin ones along `axis`: LR_k = sum_j h(j - c_k) HR_{j + phase}.

    Works on numpy arrays and torch tensors (any device) of any rank. Z HR slices give Z // r LR slices after the
    phase shift; data beyond the volume is edge-replicated (the scanner sees tissue there, not zeros).
    """
    is_numpy = isinstance(hr, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(hr)) if is_numpy else hr
    weights, i_min = slice_kernel(r, fwhm, profile)
    axis = axis % x.ndim
    n_hr = x.shape[axis] - phase
    n_lr = n_hr // r
    if n_lr < 1:
        raise ValueError(f"{x.shape[axis]} HR slices with phase {phase} are fewer than r={r}")
    moved = x.movedim(axis, -1)
    lead_shape = moved.shape[:-1]
    lines = moved.reshape(-1, 1, moved.shape[-1]).to(torch.float32)
    lines = lines[..., phase:phase + n_lr * r]
    pad_left = max(0, -i_min)
    pad_right = max(0, i_min + len(weights) - 1 - (r - 1))
    lines = F.pad(lines, (pad_left, pad_right), mode="replicate")
    kernel = torch.as_tensor(weights, dtype=lines.dtype, device=lines.device).view(1, 1, -1)
    # output k starts at HR index r*k + i_min, i.e. padded index r*k + i_min + pad_left
    start = i_min + pad_left
    lr = F.conv1d(lines[..., start:], kernel, stride=r)[..., :n_lr]
    lr = lr.reshape(*lead_shape, n_lr).movedim(-1, axis).to(x.dtype if x.is_floating_point() else torch.float32)
    return lr.numpy() if is_numpy else lr


def back_project(hr: np.ndarray, lr: np.ndarray, axis: int, r: int, fwhm: float, profile: str = "gaussian",
                 iterations: int = 5, noise_sigma: float = 0.0) -> np.ndarray:
    """The thin slices corrected towards consistency with the acquired thick ones: Landweber iterations (gradient
    steps on ||blur_subsample(hr) - lr||^2, the adjoint by autograd, the step 1 / the operator's largest eigenvalue)
    starting from `hr`. The correction lives where the slice profile sees, so what the estimate adds between the
    profile's samples stays. The iterations stop once the residual's RMS is within the thick slices' noise
    (`noise_sigma`, the discrepancy principle): fitting them closer would copy their noise into the thin slices."""
    if iterations <= 0:
        return hr
    x = torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float64)).requires_grad_(True)
    target = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float64))
    step = 1.0 / _largest_eigenvalue(r, fwhm, profile)
    for _ in range(iterations):
        residual = blur_subsample(x, axis, r, fwhm, profile).double() - target
        if float(residual.detach().pow(2).mean().sqrt()) <= noise_sigma:
            break
        gradient, = torch.autograd.grad(0.5 * (residual ** 2).sum(), x)
        with torch.no_grad():
            x -= step * gradient
    return x.detach().numpy().astype(hr.dtype)


def noise_sigma(image: np.ndarray, axis: int = -1) -> float:
    """The image noise's standard deviation, from the median absolute deviation of neighbour differences along an
    (in-plane) axis: robust to edges, which are few; 0 for noise-free images with flat backgrounds."""
    differences = np.diff(np.asarray(image, dtype=np.float64), axis=axis)
    return float(np.median(np.abs(differences - np.median(differences))) / 0.6745 / np.sqrt(2))


@lru_cache(maxsize=None)     # one per slice profile: every case and channel of a dataset shares it
def _largest_eigenvalue(r: int, fwhm: float, profile: str, slices: int = 64, rounds: int = 30) -> float:
    """Largest eigenvalue of A^T A for the thick-slice operator A along one line (power iteration)."""
    x = torch.randn(slices * r, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    value = 1.0
    for _ in range(rounds):
        x = x.requires_grad_(True)
        ax = blur_subsample(x, 0, r, fwhm, profile).double()
        atax, = torch.autograd.grad(0.5 * (ax ** 2).sum(), x)
        value = float(atax.norm() / x.detach().norm())
        x = (atax / atax.norm()).detach()
    return value


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels (D, H, W) -> (K, D, H, W) float32 one-hot maps."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels).astype(np.int64)].transpose(3, 0, 1, 2)


def majority_labels(hr_labels: Union[np.ndarray, torch.Tensor], axis: int, r: int, phase: int = 0,
                    num_classes: Optional[int] = None, ignore_label: Optional[int] = None) -> Union[np.ndarray, torch.Tensor]:
    """LR labels as an annotator on thick slices draws them: per-voxel majority over the r sub-slices.

    Ties go to the lowest label value (deterministic; argmax picks the first maximum). With an `ignore_label`, ignored
    sub-slices do not vote: a thick voxel is ignored only where all its sub-slices are (the annotation it would carry
    is that of its annotated part).
    """
    is_numpy = isinstance(hr_labels, np.ndarray)
    y = torch.from_numpy(np.ascontiguousarray(hr_labels)) if is_numpy else hr_labels
    axis = axis % y.ndim
    n_lr = (y.shape[axis] - phase) // r
    if n_lr < 1:
        raise ValueError(f"{y.shape[axis]} HR slices with phase {phase} are fewer than r={r}")
    y = y.narrow(axis, phase, n_lr * r)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.numel() else 1
    shape = list(y.shape)
    shape[axis:axis + 1] = [n_lr, r]
    y = y.reshape(shape)
    # one class at a time in bytes: a full int64 one-hot is much slower, and this runs on every training step
    count_dtype = torch.uint8 if r < 256 else torch.int32
    counts = torch.stack([(y == c).sum(dim=axis + 1, dtype=count_dtype) for c in range(num_classes)], dim=-1)
    if ignore_label is not None and ignore_label < num_classes:
        ignored = counts[..., ignore_label]
        counts[..., ignore_label] = torch.where(ignored == r, ignored, torch.zeros_like(ignored))
    lr = counts.argmax(dim=-1)
    return lr.numpy().astype(hr_labels.dtype) if is_numpy else lr.to(hr_labels.dtype)
