"""The full side-by-side benchmark on the demo's MNI152-derived subjects: arms 1-6, the
REHRSeg ablations and a wrong-slice-profile run, same width and iteration budget for every learned arm. Writes
DIR/benchmark_report.md (+ CSV, PNG, timings); rerunning with the same -o resumes after the last finished stage.

    python benchmarks/run_all.py -o DIR [-preset fast|converged|default] [-device cpu|cuda] [-r 4] [-axis 2]
                                 [-arms ARM ...] [--report_only]

fast (2 CPU cores): 16..128 features, 1200 self-SR iterations, 30 x 50 steps per learned arm, about 5 hours; at 1500
steps five of the seven learned arms have not levelled off (README). converged: the same at 60 x 50 steps, 9-10
hours with nothing else running on one 2-core machine (two stage-1 runs of 25 min, ten REHRSeg-type arms of 35-45
min, four stock arms of 25-35 min), near 4 on a faster one (stage 1 3.5 min, REHRSeg arms 15-21 min). Rerun the same
command to finish an interrupted run; -arms runs a subset.
default (a GPU): nnU-Net's default width, 1 mm template, 50 x 250 steps per learned arm.
"""
import argparse
from pathlib import Path

from benchmark_arms import BENCHMARK_ARMS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", required=True, help="output folder (created; an existing one is resumed)")
    parser.add_argument("-preset", choices=("fast", "converged", "default"), default=None,
                        help="default: 'default' on cuda, else 'fast'")
    parser.add_argument("-device", choices=("cpu", "cuda", "mps"), default=None)
    parser.add_argument("-r", type=int, default=4)
    parser.add_argument("-axis", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("-seed", type=int, default=0)
    parser.add_argument("-arms", nargs="+", default=None, metavar="ARM", choices=sorted(BENCHMARK_ARMS),
                        help="run only these arms (and the stages they need: stage 1 always, arm 1 for 1c and 5b), "
                             "e.g. rehrseg_kdEveryStep; default: every arm")
    parser.add_argument("--report_only", action="store_true",
                        help="write the report of the stages finished so far (arms not run are marked so)")
    args = parser.parse_args(argv)

    import torch

    from nnunetv2_rehrseg.cli.common import setup_logging
    from benchmark import Benchmark, resolve_benchmark_preset

    setup_logging()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.o).resolve()
    out.mkdir(parents=True, exist_ok=True)
    Benchmark(out, device, args.r, args.axis, resolve_benchmark_preset(args.preset, device), args.seed,
              args.arms)(report_only=args.report_only)
    print(f"report: {out / 'benchmark_report.md'}")


if __name__ == "__main__":
    main()
