"""The stage-2 segmenter: nnU-Net's planned network on the LR grid plus an HR head (r-fold along the LR axis).

The encoder and decoder are nnU-Net's own modules (PlainConvUNet or ResidualEncoderUNet from the plans) and keep
their parameter names, so a checkpoint of an LR nnU-Net loads through `-pretrained_weights`. The HR head reads the
full-resolution decoder features and upsamples along the LR axis with a transposed convolution whose kernel equals
its stride: HR slice r*k + j depends on LR slice k alone, so shifting the input by one LR slice shifts the HR output
by exactly r slices (no align_corners stretch).

forward(x) on an LR patch (B, C, D, H, W) returns (LR logits: a list, highest resolution first, under deep
supervision, else a tensor; HR logits (B, classes, r*D, H, W); encoder skips, for distillation).
"""
from typing import List, Tuple, Union

import torch
from torch import nn

from dynamic_network_architectures.initialization.weight_init import InitWeights_He

from nnunetv2_rehrseg.segmenter.plans import HR_SCALE_KWARG

STOCK_INFERENCE_MESSAGE = (
    "this is a REHRSeg model: it takes LR volumes and returns HR segmentations, which stock nnUNetv2_predict cannot "
    "export. Use rehrseg_predict -i LR_DIR -o OUT_DIR -d DATASET -c 3d_fullres -f FOLD instead")


class HRHead(nn.Module):
    def __init__(self, encoder: nn.Module, in_features: int, num_classes: int, r: int):
        super().__init__()
        conv = encoder.conv_op
        # half the decoder's width at r x its voxels (as the paper's 32 -> 16 head): the HR-grid convolution then
        # costs about as much as one LR-grid convolution of the last decoder stage
        hidden = max(1, in_features // 2)
        # every layer sits under `seg_layers`: nnU-Net's load_pretrained_weights skips '.seg_layers.' keys, so an LR
        # nnU-Net checkpoint (which has no HR head) can initialise the rest of the network
        self.seg_layers = nn.Sequential(
            nn.ConvTranspose3d(in_features, hidden, (r, 1, 1), stride=(r, 1, 1)),
            conv(hidden, hidden, 3, padding=1, bias=encoder.conv_bias),
            encoder.norm_op(hidden, **(encoder.norm_op_kwargs or {})) if encoder.norm_op else nn.Identity(),
            encoder.nonlin(**(encoder.nonlin_kwargs or {})) if encoder.nonlin else nn.Identity(),
            conv(hidden, num_classes, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.seg_layers(features)


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
    def __init__(self, backbone: nn.Module, num_classes: int, r: int):
        super().__init__()
        self.encoder = backbone.encoder
        self.decoder = backbone.decoder
        self.r = r
        self.hr_head = HRHead(self.encoder, self.encoder.output_channels[0], num_classes, r)
        self.hr_head.apply(InitWeights_He(1e-2))
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
        return lr_logits, self.hr_head(features), skips


def build_rehrseg_network(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import, num_input_channels: int,
                          num_output_channels: int, deep_supervision: bool) -> REHRSegNetwork:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    kwargs = dict(arch_kwargs)
    if HR_SCALE_KWARG not in kwargs:
        raise KeyError(f"the plans' arch_kwargs lack '{HR_SCALE_KWARG}': these are not REHRSeg plans "
                       f"(make them with rehrseg_plan_and_preprocess)")
    r = int(kwargs.pop(HR_SCALE_KWARG))
    backbone = get_network_from_plans(arch_class_name, kwargs, arch_kwargs_req_import, num_input_channels,
                                      num_output_channels, allow_init=True, deep_supervision=deep_supervision)
    return REHRSegNetwork(backbone, num_output_channels, r)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DDP and torch.compile wrappers."""
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network
