from dataclasses import replace

import numpy as np
import pytest
import torch

from nnunetv2_rehrseg.checkpoint import load_safe, save_atomic
from nnunetv2_rehrseg.degradation import blur_subsample
from nnunetv2_rehrseg.selfsr.config import configure
from nnunetv2_rehrseg.selfsr.inference import TrainedSelfSR, super_resolve_volume
from nnunetv2_rehrseg.selfsr.pairs import PairSampler, SRCase
from nnunetv2_rehrseg.selfsr.training import FINAL, LATEST, PLAIN, build_network, load_network, train_selfsr


def smooth_case(seed: int, z=6, size=32) -> SRCase:
    """A smooth blob phantom on a thick-slice grid: learnable structure, three labels."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z), np.linspace(-1, 1, size), np.linspace(-1, 1, size),
                             indexing="ij")
    c = rng.uniform(-0.2, 0.2, 3)
    d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    image = (0.2 + 0.6 * (d < 0.7) + 0.2 * (d < 0.35) + 0.02 * rng.normal(size=d.shape)).astype(np.float32)
    labels = ((d < 0.7).astype(np.uint8) + (d < 0.35)).astype(np.uint8)
    return SRCase(np.clip(image, 0, 1)[None], labels)


def tiny_config(**kw):
    values = dict(features=(8, 16), fused_features=16, hypotheses=4, patch=16, batch_size=4, iterations=8,
                  checkpoint_every=4)
    values.update(kw)
    return configure("fast", "cpu", 1, 3, 4, 4.0, "gaussian", [(24, 32)], **values)


def test_configure_shrinks_patch_to_data_and_divisor():
    config = configure("fast", "cpu", 1, 3, 4, 4.0, "gaussian", [(40, 90), (36, 70)])
    assert config.patch == 36 and config.patch % 4 == 0
    with pytest.raises(ValueError):
        configure("fast", "cpu", 1, 3, 4, 4.0, "gaussian", [(2, 2)])


def test_sampler_shapes_dropout_and_determinism():
    cases = [smooth_case(0), smooth_case(1)]
    a = PairSampler(cases, 4, 4.0, "gaussian", 3, 4, 16, label_dropout=1.0, seed=3).sample(5)
    b = PairSampler(cases, 4, 4.0, "gaussian", 3, 4, 16, label_dropout=1.0, seed=3).sample(5)
    assert a[0].shape == (5, 4, 4, 16, 16) and a[1].shape == (5, 1, 4, 16, 16) and a[2].shape == (5, 4, 16, 16)
    assert (a[0][:, 1:] == 0).all()  # labels dropped
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    with_labels = PairSampler(cases, 4, 4.0, "gaussian", 3, 4, 16, label_dropout=0.0, seed=3).sample(5)[0]
    torch.testing.assert_close(with_labels[:, 1:].sum(1), torch.ones(5, 4, 16, 16))  # one-hot


def test_sampler_targets_are_the_sub_slices_of_the_reference_slice():
    """Without augmentation noise: the mean of the r target sub-slices approximates the reference thick slice of
    a volume that is smooth along the degraded axis."""
    z, size = 6, 48
    yy = np.linspace(0, 1, size)[None, :, None]
    case = SRCase(np.broadcast_to(0.2 + 0.5 * yy ** 2, (1, z, size, size)).astype(np.float32).copy(),
                  np.zeros((z, size, size), np.uint8))
    sampler = PairSampler([case], 4, 4.0, "gaussian", 3, 4, 16, label_dropout=0.0, edge_replicate=0.0)
    net_input, target, _ = sampler.sample(16)
    ref = net_input[:, 0, 1]
    torch.testing.assert_close(target[:, 0].mean(1), ref, atol=2e-3, rtol=0)


def test_loss_falls_on_a_tiny_volume(tmp_path):
    cases = [smooth_case(0), smooth_case(1)]
    config = tiny_config(iterations=120, checkpoint_every=1000, uasr_fraction=0.2)
    losses = []
    train_selfsr(cases, config, tmp_path, torch.device("cpu"),
                 on_iteration=lambda it, l: losses.append(l["loss"].item()) if it <= config.plain_iterations else None)
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4])
    assert (tmp_path / FINAL).is_file() and (tmp_path / PLAIN).is_file()
    net, loaded_config = load_network(tmp_path / FINAL)
    assert net.use_uasr and loaded_config == config
    result = super_resolve_volume(net, cases[0].image, cases[0].labels, torch.device("cpu"))
    assert result["image"].shape == (1, 24, 32, 32) and result["labels"].shape == (24, 32, 32)
    assert ((result["uncertainty"] > 0) & (result["uncertainty"] < 1)).all()
    image_only = super_resolve_volume(net, cases[0].image, None, torch.device("cpu"))
    assert image_only["image"].shape == (1, 24, 32, 32)

    # the per-case entry point (stage 1's generation, rehrseg_super_resolve) follows the trained configuration:
    # without back-projection the network's image as it is; with it, closer to the acquired thick slices
    def per_case(iterations):
        selfsr = TrainedSelfSR(net, replace(loaded_config, back_projection_iterations=iterations))
        return selfsr.super_resolve_case(cases[0].image, cases[0].labels, torch.device("cpu"), 4.0, "gaussian")

    def thick_slice_error(image):
        return np.abs(blur_subsample(image[0], 0, 4, 4.0) - cases[0].image[0]).mean()
    np.testing.assert_array_equal(per_case(0)["image"], result["image"])
    corrected = per_case(5)
    assert thick_slice_error(corrected["image"]) < 0.8 * thick_slice_error(result["image"])
    np.testing.assert_array_equal(corrected["probabilities"], result["probabilities"])


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_state(tmp_path):
    cases = [smooth_case(0)]
    config = tiny_config(iterations=10, checkpoint_every=3, uasr_fraction=0.5)
    train_selfsr(cases, config, tmp_path / "straight", torch.device("cpu"))

    def interrupt(iteration, _):
        if iteration == 7:  # after the checkpoint at 6, inside the UASR phase
            raise Interrupt
    with pytest.raises(Interrupt):
        train_selfsr(cases, config, tmp_path / "resumed", torch.device("cpu"), on_iteration=interrupt)
    assert load_safe(tmp_path / "resumed" / LATEST)["iteration"] == 6
    assert not (tmp_path / "resumed" / FINAL).exists()
    train_selfsr(cases, config, tmp_path / "resumed", torch.device("cpu"))
    a = load_safe(tmp_path / "straight" / FINAL)["network_weights"]
    b = load_safe(tmp_path / "resumed" / FINAL)["network_weights"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_resume_refuses_other_settings(tmp_path):
    cases = [smooth_case(0)]
    with pytest.raises(Interrupt):
        train_selfsr(cases, tiny_config(), tmp_path, torch.device("cpu"),
                     on_iteration=lambda it, _: (_ for _ in ()).throw(Interrupt) if it == 5 else None)
    with pytest.raises(ValueError, match="other self-SR settings"):
        train_selfsr(cases, tiny_config(seed=1), tmp_path, torch.device("cpu"))


def test_initialisation_loads_matching_tensors_only(tmp_path, caplog):
    donor = build_network(replace(tiny_config(), num_classes=5))  # other label count: the stem and heads do not match
    save_atomic({"state_dict": donor.state_dict()}, tmp_path / "donor.pth")
    config = tiny_config(iterations=1)
    caplog.set_level("INFO")
    train_selfsr([smooth_case(0)], config, tmp_path / "run", torch.device("cpu"), init_checkpoint=tmp_path /
                 "donor.pth")
    assert "left at random" in caplog.text and "encoder.0.entry.0.weight" in caplog.text


def test_checkpoint_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_safe(tmp_path / "evil.pth")


def test_thick_axis_windows_are_consecutive_and_hold_the_target_slice():
    case = smooth_case(0, z=6, size=32)
    sampler = PairSampler([case], 4, 4.0, "gaussian", 3, 4, 16, label_dropout=0.0, seed=2)
    side, centre = sampler.thick_side, sampler.centre
    assert side == 1    # a Gaussian of FWHM r reaches into one neighbour on each side
    windows, thick_image = sampler.sample_thick(6, 8)
    assert windows.shape == (6, 3, 4, 4, 8, 8) and thick_image.shape == (6, 1, 8, 8)
    torch.testing.assert_close(windows[:, side, :1, centre], thick_image)
    torch.testing.assert_close(windows[:, :, 1:].sum(2), torch.ones(6, 3, 4, 8, 8))     # one-hot label maps
    # window j + 1 is window j moved by one thick slice
    torch.testing.assert_close(windows[:, 1:, :, :-1], windows[:, :-1, :, 1:])


def test_thick_axis_consistency_vanishes_for_the_true_thin_slices():
    from nnunetv2_rehrseg.degradation import blur_subsample
    from nnunetv2_rehrseg.selfsr.losses import thick_axis_consistency_loss
    r, fwhm, side, k = 4, 4.0, 1, 3
    hr = torch.from_numpy(np.random.default_rng(0).random((2, 1, 8 * r, 5, 5)).astype(np.float32))
    thick = blur_subsample(hr, 2, r, fwhm)[:, :, k]

    def prediction(image):   # window j predicts the sub-slices of thick slice k - side + j
        sub = image[:, :, r * (k - side):r * (k + side + 1)]
        return {"image": sub.unflatten(2, (2 * side + 1, r)).movedim(2, 1).flatten(0, 1)}
    assert thick_axis_consistency_loss(prediction(hr), thick, r, fwhm, "gaussian", side) < 1e-6
    assert thick_axis_consistency_loss(prediction(hr.roll(2, 2)), thick, r, fwhm, "gaussian", side) > 0.05


def test_thick_axis_term_trains_and_resumes_exactly(tmp_path):
    cases = [smooth_case(0)]
    config = tiny_config(iterations=6, checkpoint_every=3, uasr_fraction=0.5, thick_axis_weight=1.0)
    seen = []
    train_selfsr(cases, config, tmp_path / "straight", torch.device("cpu"),
                 on_iteration=lambda it, losses: seen.append(float(losses["thick_l1"].detach())))
    assert len(seen) == 6 and all(np.isfinite(seen)) and max(seen) > 0

    def interrupt(iteration, _):
        if iteration == 4:
            raise Interrupt
    with pytest.raises(Interrupt):
        train_selfsr(cases, config, tmp_path / "resumed", torch.device("cpu"), on_iteration=interrupt)
    train_selfsr(cases, config, tmp_path / "resumed", torch.device("cpu"))
    a = load_safe(tmp_path / "straight" / FINAL)["network_weights"]
    b = load_safe(tmp_path / "resumed" / FINAL)["network_weights"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


def test_models_trained_before_the_thick_axis_term_read_as_trained_without_it():
    from nnunetv2_rehrseg.selfsr.config import SelfSRConfig
    config = tiny_config()
    assert config.thick_axis_weight == 1.0
    older = {k: v for k, v in config.to_dict().items() if k != "thick_axis_weight"}
    assert SelfSRConfig.from_dict(older).thick_axis_weight == 0.0
    assert SelfSRConfig.from_dict(config.to_dict()) == config
