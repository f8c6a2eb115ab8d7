"""`-pretrained_weights` from an LR nnU-Net of the same labels: its LR segmentation layers too.

nnU-Net's `load_pretrained_weights` skips every '.seg_layers.' key, because a pretrained model usually comes from
another label set. A REHRSeg network started from the user's own LR nnU-Net (same dataset, same labels) can take
that model's LR segmentation layers as well: its LR head then starts at the LR model's answer and its residual HR
head at that answer upsampled along the thick axis, instead of relearning the last 1x1x1 convolutions. The HR head
(under 'hr_head.seg_layers.') has no counterpart in an LR model and stays as initialised.

nnU-Net calls the loader from `run_training` with the network alone, so the trainer marks its network with the
labels it segments (`mark_for_lr_seg_layers`) and `install()` wraps nnU-Net's loader once; the wrapper adds the LR
segmentation layers only for a marked network whose labels equal the checkpoint's.
"""
from typing import Dict, Optional

import torch

from nnunetv2_rehrseg.checkpoint import load_trained_checkpoint
from nnunetv2_rehrseg.segmenter.network import unwrap

LR_SEG_LAYERS = "decoder.seg_layers."
_LABELS_ATTRIBUTE = "pretrained_lr_seg_layers_for_labels"


def mark_for_lr_seg_layers(network: torch.nn.Module, labels: Optional[Dict[str, object]]) -> None:
    """Take the LR segmentation layers of `-pretrained_weights` whose dataset has these labels (None: never)."""
    setattr(unwrap(network), _LABELS_ATTRIBUTE, labels)


def lr_seg_layers_of(checkpoint: dict, network: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The checkpoint's LR segmentation-layer weights that the network has under the same names and shapes, if the
    network is marked with the checkpoint's labels; else nothing."""
    module = unwrap(network)
    labels = getattr(module, _LABELS_ATTRIBUTE, None)
    saved_labels = checkpoint.get("init_args", {}).get("dataset_json", {}).get("labels")
    if labels is None or saved_labels != labels:
        return {}
    own = module.state_dict()
    return {k: v for k, v in checkpoint["network_weights"].items()
            if k.startswith(LR_SEG_LAYERS) and k in own and own[k].shape == v.shape}


def with_lr_seg_layers(nnunet_loader):
    """nnU-Net's load_pretrained_weights, then the LR segmentation layers where they belong to the same labels."""
    if getattr(nnunet_loader, "adds_lr_seg_layers", False):
        return nnunet_loader

    def load_pretrained_weights(network, fname, verbose=False):
        nnunet_loader(network, fname, verbose)
        module = unwrap(network)
        if getattr(module, _LABELS_ATTRIBUTE, None) is None:
            return
        layers = lr_seg_layers_of(load_trained_checkpoint(fname), module)
        if layers:
            module.load_state_dict(layers, strict=False)
            print(f"REHRSeg: LR segmentation layers taken from {fname} as well (same labels): {len(layers)} tensors")
        else:
            print(f"REHRSeg: {fname} segments other labels (dataset.json), so its segmentation layers are skipped "
                  f"as nnU-Net skips them")

    load_pretrained_weights.adds_lr_seg_layers = True
    return load_pretrained_weights


def install() -> None:
    """Wrap the loader that nnU-Net's run_training calls (once; importing the trainers installs it)."""
    import nnunetv2.run.run_training as run_training

    run_training.load_pretrained_weights = with_lr_seg_layers(run_training.load_pretrained_weights)
