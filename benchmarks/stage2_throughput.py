"""Training throughput of REHRSegTrainer vs stock nnUNetTrainer on the same LR plans, on the demo's data (MNI152
subjects, 2 mm, r = 4, REHRSegPlannerCPU), with the same number of augmentation workers:

- augmentation throughput per worker: samples/s of each trainer's training loader run in one process with one thread;
- seconds per step with data loading: each trainer trained by nnU-Net's own loop (`rehrseg_train`, the demo's budget,
  8 x 50 steps), median epoch time (first epoch left out, validation steps included) per training step;
- seconds per step without data loading: synthetic batches (nnunetv2_rehrseg.tools.step_timing), nnU-Net's
  `_noDataLoading` split;
- the workers a GPU doing one step in 100-150 ms would need to keep fed, from the per-worker throughput.

    python benchmarks/stage2_throughput.py -o DIR [-workers 1] [-aug_batches 20] [-device cpu]

Resumable: the data, each trainer's run and each measurement are kept in DIR; DIR/throughput.json holds the numbers.
"""
import argparse
import json
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

TRAINER, STOCK_TRAINER = "REHRSegTrainer_fast", "nnUNetTrainer_rehrsegFastBudget"
DATASET_ID = 700   # the demo's
GPU_STEP_SECONDS = (0.10, 0.15)


def prepare_data(out: Path, device: str, selfsr_iterations: int):
    """The demo's subjects, stage 1, REHRSeg plans and the stock LR plans (skipped when already there)."""
    from nnunetv2_rehrseg.demo.arms import BASELINE_PLANS
    from nnunetv2_rehrseg.demo.pipeline import PRESETS, Pipeline

    pipeline = Pipeline(out, device, 4, 2, replace(PRESETS["fast"], selfsr_iterations=selfsr_iterations), seed=0)
    pipeline.data = pipeline.build_data()
    if not (out / "nnUNet_preprocessed" / dataset_name() / f"{BASELINE_PLANS}.json").is_file():
        pipeline.plan()
    return pipeline


def dataset_name() -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    return maybe_convert_to_dataset_name(DATASET_ID)


def trainer_instance(name: str, plans_name: str, device: torch.device):
    import nnunetv2_rehrseg.trainers as trainers
    from nnunetv2_rehrseg.planners.plans import load_dataset_plans
    from nnunetv2_rehrseg.tools.step_timing import initialized_trainer

    plans, dataset_json = load_dataset_plans(DATASET_ID, plans_name)
    return initialized_trainer(getattr(trainers, name), plans, dataset_json, device)


def augmentation_samples_per_second(name: str, plans_name: str, batches: int) -> float:
    """One worker's throughput: the training loader in this process, one thread, after two warm-up batches."""
    os.environ["nnUNet_n_proc_DA"] = "0"
    trainer = trainer_instance(name, plans_name, torch.device("cpu"))
    loader, _ = trainer.get_dataloaders()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(2):
            next(loader)
        t = time.perf_counter()
        for _ in range(batches):
            next(loader)
        return batches * trainer.batch_size / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)


def seconds_per_step_with_loading(pipeline, name: str, plans_name: str, workers: int) -> float:
    from nnunetv2_rehrseg.tools.step_timing import seconds_per_step
    from research_trainers import iterations_per_epoch

    fold = pipeline.out / "nnUNet_results" / dataset_name() / f"{name}__{plans_name}__3d_fullres" / "fold_0"
    if not (fold / "checkpoint_final.pth").is_file():
        pipeline.env["nnUNet_n_proc_DA"] = str(workers)
        pipeline.train(name, plans_name)
    logged = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    return seconds_per_step(logged, iterations_per_epoch(name))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", required=True)
    parser.add_argument("-workers", type=int, default=1, help="augmentation workers for the training runs")
    parser.add_argument("-aug_batches", type=int, default=20)
    parser.add_argument("-selfsr_iterations", type=int, default=100,
                        help="stage-1 budget (the plans and the loader's cost do not depend on it)")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from nnunetv2_rehrseg.demo.arms import BASELINE_PLANS
    from nnunetv2_rehrseg.tools.step_timing import compare_step_times

    out = Path(args.o).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "throughput.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}

    def measure(key, fn, *fn_args):
        if key not in results:
            results[key] = fn(*fn_args)
            results_file.write_text(json.dumps(results, indent=1))
        logging.info("%s: %s", key, results[key])
        return results[key]

    pipeline = prepare_data(out, args.device, args.selfsr_iterations)
    arms = {"rehrseg": (TRAINER, "REHRSegPlans"), "stock": (STOCK_TRAINER, BASELINE_PLANS)}
    for arm, (name, plans) in arms.items():
        measure(f"{arm} augmentation samples/s per worker", augmentation_samples_per_second, name, plans,
                args.aug_batches)
    for arm, (name, plans) in arms.items():
        measure(f"{arm} s/step with data loading ({args.workers} workers)", seconds_per_step_with_loading, pipeline,
                name, plans, args.workers)
    timing = measure("no data loading",
                     lambda: compare_step_times(DATASET_ID, "REHRSegTrainer", torch.device(args.device)))

    batch_size = trainer_instance(STOCK_TRAINER, BASELINE_PLANS, torch.device("cpu")).batch_size
    lines = ["| | REHRSeg | stock nnU-Net | ratio |", "|---|---|---|---|"]
    per_worker = [results[f"{a} augmentation samples/s per worker"] for a in arms]
    with_loading = [results[f"{a} s/step with data loading ({args.workers} workers)"] for a in arms]
    no_loading = [timing["rehrseg_s_per_step"], timing["nnUNetTrainer_s_per_step"]]
    lines.append(f"| augmentation, samples/s per worker | {per_worker[0]:.2f} | {per_worker[1]:.2f} | "
                 f"{per_worker[1] / per_worker[0]:.2f}x cost |")
    lines.append(f"| s/step with data loading ({args.workers} workers) | {with_loading[0]:.3f} | {with_loading[1]:.3f} | "
                 f"{with_loading[0] / with_loading[1]:.2f}x |")
    lines.append(f"| s/step without data loading | {no_loading[0]:.3f} | {no_loading[1]:.3f} | "
                 f"{no_loading[0] / no_loading[1]:.2f}x |")
    for step in GPU_STEP_SECONDS:
        needed = [math.ceil(batch_size / (rate * step)) for rate in per_worker]
        lines.append(f"| workers to feed a {1000 * step:.0f} ms GPU step (batch {batch_size}) | {needed[0]} | "
                     f"{needed[1]} | |")
    results["table"] = lines
    results_file.write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
