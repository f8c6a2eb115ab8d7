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
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("-r", type=int, default=4, help="thick-slice factor")
    parser.add_argument("-axis", type=int, default=2, choices=(0, 1, 2), help="thick axis (SimpleITK order)")
    parser.add_argument("-spacing", type=float, default=2.0, help="HR spacing in mm of the template")
    parser.add_argument("-n_train", type=int, default=6)
    parser.add_argument("-n_test", type=int, default=2)
    parser.add_argument("-iterations", type=int, default=300, help="self-SR iterations")
    parser.add_argument("-tr", default="REHRSegTrainer_fast")
    parser.add_argument("-tr_baseline", default="nnUNetTrainer_rehrsegFastBudget")
    parser.add_argument("-seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="delete a non-empty output folder first")
    args = parser.parse_args(argv)
    setup_logging()
    from nnunetv2_rehrseg.demo.pipeline import Pipeline, clean_output

    out = Path(args.o).resolve()
    clean_output(out, args.overwrite)
    Pipeline(out, args.device, args.r, args.axis, args.spacing, args.n_train, args.n_test, args.iterations, args.tr,
             args.tr_baseline, args.seed)()
    print(f"report: {out / 'report.md'}")
