"""rehrseg_demo: the whole pipeline on the bundled real-anatomy default, with a report."""
import argparse
from pathlib import Path

from nnunetv2_rehrseg.cli.common import setup_logging
from nnunetv2_rehrseg.errors import exits_cleanly


@exits_cleanly
def demo_entry(argv=None) -> None:
    parser = argparse.ArgumentParser(description="REHRSeg demo: MNI152-derived subjects with simulated thick slices "
                                                 "-> stage 1, stage 2, prediction and scoring against the LR "
                                                 "nnU-Net baseline and the label round trip; writes DIR/report.md")
    parser.add_argument("-o", required=True, help="output folder (holds its own nnU-Net tree)")
    parser.add_argument("-preset", choices=("fast", "default"), default=None,
                        help="fast: 2 CPU cores, <= 30 min (16..128 features; arm 1 1600 steps, REHRSeg 800 on top); "
                             "default: a GPU (nnU-Net's width, 1 mm template, 50 x 250 steps each). Default: "
                             "'default' on cuda, else 'fast'")
    parser.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("-r", type=int, default=4, help="thick-slice factor")
    parser.add_argument("-axis", type=int, default=2, choices=(0, 1, 2), help="thick axis (SimpleITK order)")
    # the rest override the preset
    parser.add_argument("-spacing", type=float, help="HR spacing in mm of the template")
    parser.add_argument("-n_train", type=int)
    parser.add_argument("-n_test", type=int)
    parser.add_argument("-iterations", type=int, help="self-SR iterations")
    parser.add_argument("-tr", help="REHRSeg trainer")
    parser.add_argument("-tr_baseline", help="arm 1 trainer (a budget at which stock nnU-Net learns every label: the "
                                                "report checks)")
    parser.add_argument("-rehrseg_init", choices=("baseline", "scratch"), default=None,
                        help="baseline: REHRSeg starts from arm 1's final checkpoint (-pretrained_weights) and trains "
                             "its own budget on top, as recommended when an LR nnU-Net exists (the presets' "
                             "default); scratch: from random weights")
    parser.add_argument("-seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="delete a non-empty output folder first")
    args = parser.parse_args(argv)
    setup_logging()
    import torch

    from nnunetv2_rehrseg.tools.commands import clean_output
    from nnunetv2_rehrseg.demo.pipeline import Pipeline, resolve_preset

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = resolve_preset(args.preset, device, spacing_mm=args.spacing, n_train=args.n_train, n_test=args.n_test,
                            selfsr_iterations=args.iterations, trainer=args.tr, baseline_trainer=args.tr_baseline,
                            rehrseg_from_baseline=None if args.rehrseg_init is None else args.rehrseg_init == "baseline")
    out = Path(args.o).resolve()
    clean_output(out, args.overwrite)
    Pipeline(out, device, args.r, args.axis, preset, args.seed)()
    print(f"report: {out / 'report.md'}")
