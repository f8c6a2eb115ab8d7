import pytest
import torch

from nnunetv2_rehrseg.selfsr.losses import plain_sr_loss, soft_dice_loss, uasr_loss
from nnunetv2_rehrseg.selfsr.network import SelfSRNet


def tiny(r=4, uasr=True, image_channels=1, num_classes=3):
    torch.manual_seed(0)
    return SelfSRNet(image_channels, num_classes, r, window=4, features=(8, 16), fused_features=16, hypotheses=4,
                     uasr=uasr)


@pytest.mark.parametrize("r", [2, 3, 4])
@pytest.mark.parametrize("image_channels", [1, 2])
def test_output_shapes_and_ranges(r, image_channels):
    net = tiny(r, image_channels=image_channels)
    x = torch.rand(2, image_channels + 3, 4, 16, 24)
    out = net(x)
    assert out["image"].shape == (2, image_channels, r, 16, 24)
    assert out["seg"].shape == (2, 3, r, 16, 24)
    assert out["uncertainty"].shape == (2, 1, r, 16, 24)
    assert ((out["uncertainty"] > 0) & (out["uncertainty"] < 1)).all()
    net.use_uasr = False
    plain = net(x)
    assert "uncertainty" not in plain and plain["image"].shape == out["image"].shape


def test_image_is_a_residual_to_the_interpolated_window():
    net = tiny()
    x = torch.zeros(1, 4, 4, 8, 8)
    x[:, 0] = torch.linspace(0, 1, 4).view(4, 1, 1)  # a ramp across the window
    with torch.no_grad():
        net.uasr_head.hypotheses.weight.zero_()
        net.uasr_head.hypotheses.bias.zero_()
    image = net(x)["image"][0, 0, :, 0, 0]
    # sub-slice t of the reference (second) slice lies at window position 1 + (t - 1.5) / 4
    expected = (1 + (torch.arange(4) - 1.5) / 4) / 3
    torch.testing.assert_close(image, expected)


def test_uasr_phase_starts_from_the_plain_output():
    net = tiny()
    x = torch.rand(2, 4, 4, 8, 8)
    net.use_uasr = False
    plain = net(x)
    net.uasr_head.init_from_plain(net.plain_head, error_level=0.03)
    net.use_uasr = True
    uasr = net(x)
    torch.testing.assert_close(uasr["image"], plain["image"], atol=2e-2, rtol=0)
    torch.testing.assert_close(uasr["seg"], plain["seg"], atol=2e-2, rtol=0)
    torch.testing.assert_close(uasr["uncertainty"], torch.full_like(uasr["uncertainty"], 0.03))


def test_encoder_runs_on_any_number_of_slices():
    net = tiny()
    skips = net.encode(torch.rand(1, 4, 11, 16, 16))
    assert [tuple(s.shape) for s in skips] == [(1, 8, 11, 16, 16), (1, 16, 11, 8, 8)]


def test_bad_window_is_rejected():
    with pytest.raises(ValueError, match="frames"):
        tiny()(torch.rand(1, 4, 3, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        tiny()(torch.rand(1, 4, 4, 15, 16))


def test_losses_and_gradients():
    net = tiny()
    x = torch.rand(2, 4, 4, 8, 8)
    image, labels = torch.rand(2, 1, 4, 8, 8), torch.randint(0, 3, (2, 4, 8, 8))
    losses = uasr_loss(net(x), image, labels)
    assert set(losses) == {"loss", "l1", "nll", "u_regression", "seg"}
    losses["loss"].backward()
    assert net.uasr_head.uncertainty.weight.grad.abs().sum() > 0
    assert net.encoder[0].entry[0].weight.grad.abs().sum() > 0
    assert net.plain_head.conv.weight.grad is None
    net.zero_grad()
    net.use_uasr = False
    plain_sr_loss(net(x), image, labels)["loss"].backward()
    assert net.plain_head.conv.weight.grad.abs().sum() > 0


def test_soft_dice_perfect_and_wrong():
    target = torch.randint(0, 3, (2, 5, 5))
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 100
    assert soft_dice_loss(perfect, target) == pytest.approx(0.0, abs=1e-4)
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).movedim(-1, 1).float() * 100
    assert soft_dice_loss(wrong, target) == pytest.approx(1.0, abs=1e-4)


def test_uasr_nll_is_minimal_when_u_matches_the_error():
    image = torch.zeros(1, 1, 2, 4, 4)
    labels = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    seg = torch.zeros(1, 3, 2, 4, 4)
    pred_image = torch.full_like(image, 0.2)
    nll = {u: uasr_loss({"image": pred_image, "seg": seg, "uncertainty": torch.full_like(image, u)}, image,
                        labels)["nll"].item() for u in (0.05, 0.2, 0.6)}
    assert nll[0.2] < nll[0.05] and nll[0.2] < nll[0.6]


def test_label_residual_with_zero_correction_gives_the_interpolated_input_labels():
    torch.manual_seed(1)
    net = SelfSRNet(1, 3, 4, window=4, features=(8, 16), fused_features=16, hypotheses=4, label_residual=True)
    labels = torch.randint(0, 3, (1, 4, 8, 8))
    x = torch.cat([torch.rand(1, 1, 4, 8, 8), torch.nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()], 1)
    with torch.no_grad():
        net.uasr_head.hypotheses.weight.zero_()
        net.uasr_head.hypotheses.bias.zero_()
        seg = net(x)["seg"][0]                                          # (3, r, 8, 8)
    one_hot = x[0, 1:]
    expected = torch.einsum("tf,cfhw->cthw", net.interp, one_hot) * net.label_prior
    torch.testing.assert_close(seg, expected)
    # at r = 4 every sub-slice lies closest to the reference slice: the argmax is its labels
    assert torch.equal(seg.argmax(0), labels[0, 1].expand(4, -1, -1))
    # the option is off for models configured before it existed, and without labels there is no prior
    from nnunetv2_rehrseg.selfsr.config import SelfSRConfig

    config = SelfSRConfig(image_channels=1, num_classes=3, r=4, fwhm=4.0)
    assert config.label_residual and not SelfSRConfig.from_dict(
        {k: v for k, v in config.to_dict().items() if k != "label_residual"}).label_residual
    x[:, 1:] = 0
    with torch.no_grad():
        assert torch.equal(net(x)["seg"], torch.zeros_like(net(x)["seg"]))
