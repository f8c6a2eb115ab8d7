"""rehrseg_selftest: check this machine (CUDA by default) end to end on a tiny generated dataset."""
import argparse
import sys
from pathlib import Path

from nnunetv2_rehrseg.cli.common import add_device_flag, resolve_device, setup_logging
from nnunetv2_rehrseg.errors import exits_cleanly


@exits_cleanly
def selftest_entry(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Self-check on a tiny generated dataset: stage 1, planning, REHRSegTrainer (AMP on CUDA), --c "
                    "resume, --val, rehrseg_predict LR -> HR with TTA, stock nnUNetTrainer on the same LR plans; "
                    "checks losses, geometry and resume, times every part; writes DIR/selftest.json and exits "
                    "non-zero when a check fails")
    parser.add_argument("-o", required=True, help="output folder (holds its own nnU-Net tree)")
    add_device_flag(parser)
    parser.add_argument("-minutes", type=float, default=8.0,
                        help="time limit: the check fails when the run takes longer (default 8)")
    parser.add_argument("--overwrite", action="store_true", help="delete a non-empty output folder first")
    args = parser.parse_args(argv)
    setup_logging()
    from nnunetv2_rehrseg.tools.commands import clean_output
    from nnunetv2_rehrseg.tools.selftest import SelfTest, summary_table

    device = resolve_device(args.device)
    out = Path(args.o).resolve()
    clean_output(out, args.overwrite)
    result = SelfTest(out, device, args.minutes)()
    print(summary_table(result))
    print(f"\n{out / 'selftest.json'}")
    if not result.passed:
        sys.exit(1)
