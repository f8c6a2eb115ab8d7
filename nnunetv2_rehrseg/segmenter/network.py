"""The stage-2 segmenter: nnU-Net's planned network on the LR grid plus an HR head (r-fold along the LR axis).

The encoder and decoder are nnU-Net's own modules (PlainConvUNet or ResidualEncoderUNet from the plans) and keep
their parameter names, so a checkpoint of an LR nnU-Net loads through `-pretrained_weights`. The HR head adds to the
LR logits, linearly upsampled along the LR axis on the same field of view, a correction read from the full-resolution
decoder features and taken to the HR grid in one of four forms (HR_HEAD_FORMS, see HRHead): "linear" (the default),
"subslice" and "subpixel" compute on the LR grid and rearrange r x the channels into r sub-slices (depth-to-space
along the LR axis), "transposed" uses a transposed convolution whose kernel equals its stride. All keep shifts
exact: one LR slice of shift in the input moves the HR output by exactly r slices (no align_corners stretch).

forward(x) on an LR patch (B, C, D, H, W) returns (LR logits: a list, highest resolution first, under deep
supervision, else a tensor; HR logits (B, classes, r*D, H, W); encoder skips, for distillation).
"""
import functools
from types import SimpleNamespace
from typing import List, Tuple, Union

import numpy as np
import torch
from torch import nn

from dynamic_network_architectures.initialization.weight_init import InitWeights_He

from nnunetv2_rehrseg.planners.plans import HR_SCALE_KWARG

STOCK_INFERENCE_MESSAGE = (
    "this is a REHRSeg model: it takes LR volumes and returns HR segmentations, which stock nnUNetv2_predict cannot "
    "export. Use rehrseg_predict -i LR_DIR -o OUT_DIR -d DATASET -c 3d_fullres -f FOLD instead")
# the HR head's keys in a state dict (the gate says whether the head is residual, see HRHead)
HR_HEAD_PREFIX = "hr_head.seg_layers."
HR_GATE_KEY = HR_HEAD_PREFIX + "lr_logits_gate"


def upsample_thick_axis(logits: torch.Tensor, r: int) -> torch.Tensor:
    """Linear upsampling of (B, C, D, H, W) by r along D on the same field of view: HR slice r*k + j sits at LR
    position k + (j + 0.5) / r - 0.5 (ends replicated), so a one-slice shift of the input moves it by r slices.
    Equal to F.interpolate(..., scale_factor=(r, 1, 1), mode="trilinear", align_corners=False), as r blends of two
    shifted views: half the time of the general kernel forward + backward on a CPU."""
    d = logits.shape[2]
    padded = torch.cat([logits[:, :, :1], logits, logits[:, :, -1:]], 2)
    sub_slices = []
    for j in range(r):
        position = (j + 0.5) / r - 0.5                  # within [-0.5, 0.5): between slices k - 1 and k, or k and k + 1
        lower = 0 if position < 0 else 1                # in `padded`, whose slice k + 1 is LR slice k
        weight = position - (lower - 1)
        below = padded.narrow(2, lower, d)
        sub_slices.append(torch.lerp(below, padded.narrow(2, lower + 1, d), weight) if weight else below)
    return torch.stack(sub_slices, 3).flatten(2, 3)


class DepthToSpace(nn.Module):
    """(B, r*C, D, H, W) -> (B, C, r*D, H, W): channel c*r + j becomes sub-slice j of LR slice k (HR slice r*k + j)."""

    def __init__(self, r: int):
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        return x.view(b, c // self.r, self.r, d, h, w).transpose(2, 3).reshape(b, c // self.r, d * self.r, h, w)


HR_HEAD_FORMS = ("linear", "subslice", "subpixel", "transposed")


def kernel_positions(named_weights) -> Tuple[int, ...]:
    """Positions in the HR head's layer list of the layers with a kernel (convolutions: weights of 3 or more
    dimensions, unlike a norm's), from (position, weight) pairs."""
    return tuple(sorted(int(i) for i, weight in named_weights if weight is not None and weight.dim() >= 3))


def _layer_weights(layers) -> List[tuple]:
    return [(i, getattr(layer, "weight", None)) for i, layer in enumerate(layers)]


@functools.lru_cache(maxsize=None)
def _form_by_kernel_positions() -> dict:
    """Each form's kernel positions, read from its own layer list (hr_head_layers): they differ between forms."""
    stand_in = SimpleNamespace(conv_op=nn.Conv3d, conv_bias=True, norm_op=nn.InstanceNorm3d,
                               norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={})
    table = {}
    for form in HR_HEAD_FORMS:
        layers = hr_head_layers(form, stand_in, in_features=2, num_classes=2, r=2)
        table[kernel_positions(_layer_weights(layers))] = form
    return table


def hr_head_form_of(state_dict: dict) -> str:
    """The HR head form of saved network weights, from where its layers with kernels sit (transposed-form weights
    saved before the other forms existed included)."""
    positions = kernel_positions((k[len(HR_HEAD_PREFIX):].split(".")[0], v) for k, v in state_dict.items()
                                 if k.startswith(HR_HEAD_PREFIX) and k.endswith(".weight"))
    try:
        return _form_by_kernel_positions()[positions]
    except KeyError:
        raise ValueError(f"these weights have no HR head of a known form (kernels at positions {positions}; "
                         f"forms: {HR_HEAD_FORMS})") from None


def hr_head_layers(form: str, encoder, in_features: int, num_classes: int, r: int) -> List[nn.Module]:
    """The layer list of an HR head form (see HRHead), with the encoder's conv, norm and nonlinearity types."""
    if form not in HR_HEAD_FORMS:
        raise ValueError(f"HR head form {form!r}: choose one of {HR_HEAD_FORMS}")
    conv = encoder.conv_op
    # half the decoder's width per HR voxel (as the paper's 32 -> 16 head)
    hidden = max(1, in_features // 2)

    def norm_and_nonlin(channels: int) -> List[nn.Module]:
        return [encoder.norm_op(channels, **(encoder.norm_op_kwargs or {})) if encoder.norm_op else nn.Identity(),
                encoder.nonlin(**(encoder.nonlin_kwargs or {})) if encoder.nonlin else nn.Identity()]
    if form == "subslice":
        return [conv(in_features, hidden * r, (3, 1, 1), padding=(1, 0, 0), bias=encoder.conv_bias),
                *norm_and_nonlin(hidden * r), conv(hidden * r, num_classes * r, 1), DepthToSpace(r)]
    if form == "linear":
        return [conv(in_features, num_classes * r, (3, 1, 1), padding=(1, 0, 0)), DepthToSpace(r)]
    if form == "subpixel":
        return [conv(in_features, hidden * r, 3, padding=1, bias=encoder.conv_bias),
                *norm_and_nonlin(hidden * r), DepthToSpace(r), conv(hidden, num_classes, 1)]
    return [nn.ConvTranspose3d(in_features, hidden, (r, 1, 1), stride=(r, 1, 1)),
            conv(hidden, hidden, 3, padding=1, bias=encoder.conv_bias), *norm_and_nonlin(hidden),
            conv(hidden, num_classes, 1)]


class HRHead(nn.Module):
    """HR logits = gate * (the LR logits upsampled along the thick axis) + a learned correction from the decoder's
    full-resolution features. The correction's last layer starts at zero, so with the gate at 1 (the default) the HR
    head starts at the LR head's answer and learns only what the thin slices add; gate 0 is the original head that
    predicts HR logits from the features alone (an ablation; it starts with He-initialised weights).

    The forms (docs/results-speed.md: their cost; their scores on the benchmark's validation subject are alike):
    "linear" (the default): a (3, 1, 1) conv of the decoder features across each thick slice and its neighbours
    straight to r x the classes on the LR grid, then depth-to-space. The decoder's last stage has already mixed the
    in-plane context into the features; what a sub-slice adds is where along the thick axis a boundary lies between
    this thick slice and its neighbours.
    "subslice": the same conv to r x a hidden width, norm, nonlinearity, a 1x1x1 readout, depth-to-space.
    "subpixel": a 3x3x3 conv on the LR grid to r x the hidden width, depth-to-space, a 1x1x1 readout on the HR grid.
    "transposed": transposed conv (kernel = stride = r along the thick axis), then a 3x3x3 conv on the HR grid and the
    readout. The hidden forms have half the decoder's width per HR voxel."""

    def __init__(self, encoder: nn.Module, in_features: int, num_classes: int, r: int, form: str = "linear"):
        super().__init__()
        self.r, self.form = r, form
        layers = hr_head_layers(form, encoder, in_features, num_classes, r)
        # every layer sits under `seg_layers`: nnU-Net's load_pretrained_weights skips '.seg_layers.' keys, so an LR
        # nnU-Net checkpoint (which has no HR head) can initialise the rest of the network
        self.seg_layers = nn.Sequential(*layers)
        # the gate as a buffer (saved with the weights, so inference knows whether the head is residual) under
        # '.seg_layers.' (see above); a float factor rather than a Python flag keeps the forward free of branches for
        # torch.compile
        self.seg_layers.register_buffer("lr_logits_gate", torch.ones(()))
        self.register_load_state_dict_pre_hook(_gate_of_weights_saved_without_one)
        self.reset_parameters(residual=True)

    @property
    def readout(self) -> nn.Module:
        """The last convolution (to the classes): zero at the start of a residual head."""
        return self.seg_layers[kernel_positions(_layer_weights(self.seg_layers))[-1]]

    @property
    def residual(self) -> bool:
        return bool(self.seg_layers.lr_logits_gate)

    @torch.no_grad()
    def reset_parameters(self, residual: bool) -> None:
        self.seg_layers.apply(InitWeights_He(1e-2))
        first = self.seg_layers[0]
        if isinstance(first, nn.ConvTranspose3d):
            # with kernel = stride every HR voxel receives one tap per input channel: fan-in = in_channels (He's rule
            # as applied to a conv would count out_channels * r)
            first.weight.normal_(0, (2 / (1 + 1e-2 ** 2)) ** 0.5 / first.in_channels ** 0.5)
        last = self.readout
        if residual:
            last.weight.zero_()
            last.bias.zero_()
        self.seg_layers.lr_logits_gate.fill_(1.0 if residual else 0.0)

    def forward(self, features: torch.Tensor, lr_logits: torch.Tensor) -> torch.Tensor:
        correction = self.seg_layers(features)
        gate = self.seg_layers.lr_logits_gate.to(correction.dtype)
        return gate * upsample_thick_axis(lr_logits.to(correction.dtype), self.r) + correction


def _gate_of_weights_saved_without_one(module, state_dict, prefix, *_) -> None:
    """Weights saved before the HR head became residual carry no gate: their head predicts from the features alone.
    Supplying gate 0 here lets every loader (inference, nnU-Net's --c, user code) read them strictly."""
    gate = prefix + "seg_layers.lr_logits_gate"
    if gate not in state_dict and prefix + "seg_layers.0.weight" in state_dict:
        state_dict[gate] = torch.zeros(())


def decode(decoder: nn.Module, skips: List[torch.Tensor]) -> Tuple[Union[torch.Tensor, List[torch.Tensor]],
                                                                   torch.Tensor]:
    """dynamic_network_architectures' UNetDecoder.forward that also returns the full-resolution features."""
    x = skips[-1]
    outputs = []
    last = len(decoder.stages) - 1
    for s, stage in enumerate(decoder.stages):
        x = stage(torch.cat((decoder.transpconvs[s](x), skips[-(s + 2)]), 1))
        if decoder.deep_supervision or s == last:
            outputs.append(decoder.seg_layers[s](x))
    outputs = outputs[::-1]
    return (outputs if decoder.deep_supervision else outputs[0]), x


class REHRSegNetwork(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, r: int, hr_head_form: str = "linear"):
        super().__init__()
        self.encoder = backbone.encoder
        self.decoder = backbone.decoder
        self.r = r
        self.hr_head = HRHead(self.encoder, self.encoder.output_channels[0], num_classes, r, hr_head_form)
        # stock nnU-Net inference builds this network through the trainer and would silently export LR-grid
        # output; only REHRSeg's own code switches the LR -> HR forward on
        self.rehrseg_forward_enabled = False

    def enable_rehrseg_forward(self) -> "REHRSegNetwork":
        self.rehrseg_forward_enabled = True
        return self

    def forward(self, x: torch.Tensor):
        if not self.rehrseg_forward_enabled:
            raise RuntimeError(STOCK_INFERENCE_MESSAGE)
        skips = self.encoder(x)
        lr_logits, features = decode(self.decoder, skips)
        highest = lr_logits[0] if isinstance(lr_logits, (list, tuple)) else lr_logits
        return lr_logits, self.hr_head(features, highest), skips


# What a training step keeps for the backward pass beyond the LR network (autograd's saved tensors with nnU-Net's
# Dice + CE on both heads, measured in tests/test_stage2_units.py), in elements: per LR voxel the decoder's top
# features (the HR head's correction reads them); per HR voxel the loss's target; per HR voxel and class the HR head's
# output, the upsampled LR logits, their sum and the loss's softmax. nnU-Net's VRAM estimate counts about 0.32 of its
# units per saved element of the default planner's PlainConvUNet (ResEnc networks save more per unit: there the HR
# share comes out conservative).
SAVED_PER_HR_VOXEL = 1.5
SAVED_PER_HR_VOXEL_AND_CLASS = 3.5
NNUNET_UNITS_PER_SAVED_ELEMENT = 0.32


def hr_head_feature_map_size(lr_patch_size, num_classes: int, r: int, top_features: int) -> float:
    """What the HR head and its loss add to nnU-Net's VRAM estimate (static_estimate_VRAM_usage's units, per
    sample) for an LR patch."""
    per_lr_voxel = top_features + r * (SAVED_PER_HR_VOXEL + SAVED_PER_HR_VOXEL_AND_CLASS * num_classes)
    return float(NNUNET_UNITS_PER_SAVED_ELEMENT * per_lr_voxel * np.prod(lr_patch_size, dtype=np.float64))


def build_rehrseg_network(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import, num_input_channels: int,
                          num_output_channels: int, deep_supervision: bool,
                          hr_head_form: str = "linear") -> REHRSegNetwork:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    kwargs = dict(arch_kwargs)
    if HR_SCALE_KWARG not in kwargs:
        raise KeyError(f"the plans' arch_kwargs lack '{HR_SCALE_KWARG}': these are not REHRSeg plans "
                       f"(make them with rehrseg_plan_and_preprocess)")
    r = int(kwargs.pop(HR_SCALE_KWARG))
    backbone = get_network_from_plans(arch_class_name, kwargs, arch_kwargs_req_import, num_input_channels,
                                      num_output_channels, allow_init=True, deep_supervision=deep_supervision)
    return REHRSegNetwork(backbone, num_output_channels, r, hr_head_form)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DDP and torch.compile wrappers."""
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network
