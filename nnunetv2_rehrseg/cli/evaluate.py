"""rehrseg_evaluate: Dice, HD95 and ASSD per label in millimetres, per case and summarised (JSON + CSV)."""
import argparse

from nnunetv2_rehrseg.cli.common import detect_file_ending, setup_logging
from nnunetv2_rehrseg.errors import exits_cleanly


@exits_cleanly
def evaluate_entry(argv=None) -> None:
    from pathlib import Path

    from nnunetv2_rehrseg.evaluation import evaluate_folders, regions_of, write_metrics

    parser = argparse.ArgumentParser(description="Score segmentations against references with spacing-aware "
                                                 "metrics (Dice, HD95 mm, ASSD mm)")
    parser.add_argument("-ref", required=True, help="folder of reference segmentations (e.g. HR ground truth)")
    parser.add_argument("-pred", required=True, help="folder of predictions with the same file names")
    parser.add_argument("-l", nargs="+", type=int, default=None,
                        help="labels to score (default: the regions of a region-based model, read from the "
                             "dataset.json rehrseg_predict writes into -pred; else every non-zero label found)")
    parser.add_argument("-o", required=True, help="metrics JSON; a CSV is written beside it")
    parser.add_argument("-csv", default=None, help="CSV path (default: the JSON path with .csv)")
    parser.add_argument("-file_ending", default=None, help="default: the references' format (.nii.gz, .mha, ...)")
    parser.add_argument("--chill", action="store_true", help="score only the references that have a prediction")
    args = parser.parse_args(argv)
    setup_logging()
    ending = args.file_ending or detect_file_ending(args.ref)
    labels = args.l if args.l is not None else regions_of(Path(args.pred) / "dataset.json")
    result = evaluate_folders(args.ref, args.pred, labels, ending, args.chill)
    write_metrics(result, args.o, args.csv)
    summary = result["summary"]
    print(f"{summary['cases']} case(s); mean Dice {summary['mean']['Dice']:.4f}, HD95 {summary['mean']['HD95']:.3f} "
          f"mm, ASSD {summary['mean']['ASSD']:.3f} mm ({summary['undefined_surface_distances']} undefined surface "
          f"distance(s): empty masks)")
