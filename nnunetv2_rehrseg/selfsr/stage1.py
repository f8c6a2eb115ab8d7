"""Stage 1 end to end: raw LR dataset -> self-SR fit -> pseudo-HR images, labels and uncertainty + QC, written
under nnUNet_preprocessed/<dataset>/rehrseg/ (the layout: nnunetv2_rehrseg.layout; nnUNet_raw is only read).
Each label's pseudo-HR labels come from the self-SR or from shape-based interpolation of the annotation, as decided
on the in-plane task before the first case is written (selfsr.label_sources; qc/label_sources.json), and are made to
agree with the annotation (their thick-slice majority is the LR label). qc/lr_dice.json holds, per case and
label, the network's own labels and the written labels degraded back to LR vs the real LR labels, and the fraction of
HR voxels relabelled.
"""
import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from nnunetv2_rehrseg.degradation import (SLICE_PROFILES, majority_labels, profile_fwhm_in_voxels)
from nnunetv2_rehrseg.checkpoint import load_safe, save_atomic
from nnunetv2_rehrseg.class_probabilities import quantise
from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.geometry import (SCALE_WARNING_FRACTION, SliceGeometry, hr_grid, numpy_axis_of, resolve_scale,
                                       slice_geometry)
from nnunetv2_rehrseg.image_io import write_image, write_json_atomic
from nnunetv2_rehrseg.layout import PSEUDO_HR_ENDING, SELFSR_FINAL, Stage1Folder
from nnunetv2_rehrseg.qc import dice_per_label, save_montage
from nnunetv2_rehrseg.raw_dataset import LoadedCase, RawDataset, load_case, open_raw_dataset
from nnunetv2_rehrseg.selfsr.config import configure
from nnunetv2_rehrseg.selfsr.inference import TrainedSelfSR
from nnunetv2_rehrseg.selfsr.label_sources import (SAFETY_MARGIN, SELFSR_ONLY, LabelSources, decide_label_sources,
                                                   interpolation_probabilities, written_targets)
from nnunetv2_rehrseg.selfsr.pairs import SRCase
from nnunetv2_rehrseg.selfsr.pseudo_labels import keep_ignored_ignored
from nnunetv2_rehrseg.selfsr.training import load_network, train_selfsr
from nnunetv2_rehrseg.selfsr.video_prior import (FrameInterpolator, InPlanePairs, find_rife_weights,
                                                 finetune_frame_interpolator, interpolate_thick_axis,
                                                 load_frame_interpolator)

logger = logging.getLogger(__name__)


@dataclass
class Stage1Settings:
    """A dataset's geometry as stage 1 reads it: the dataset's values (its most common thick axis, the median slice
    spacing and its r: the grid the segmenter is planned for) and each case's own (`cases`: thick axis, slice spacing
    and thickness, r). Folders written before per-case geometry have no `cases`: every case then has the dataset's
    values, as it had."""
    r: int
    lr_axis: int                 # sitk index order (0 = x, 2 = z)
    slice_spacing: float         # median over the training cases, mm
    in_plane_spacing: float
    hr_spacing: float            # slice_spacing / r
    slice_thickness: float
    fwhm: float                  # slice profile FWHM in HR voxels
    profile: str
    preset: str
    target_spacing: Optional[float] = None         # the HR spacing each case's r is taken against
    cases: Dict[str, dict] = field(default_factory=dict)    # identifier -> SliceGeometry.to_dict()

    @classmethod
    def load(cls, path) -> "Stage1Settings":
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def from_plan_block(cls, block) -> "Stage1Settings":
        """The settings a trained model's plans carry (REHRSegPlanBlock: array order after nnU-Net's transpose, the
        thick axis first), for a model used without its stage-1 folder."""
        return cls(r=block.r, lr_axis=block.lr_axis_sitk, slice_spacing=block.lr_spacing[0],
                   in_plane_spacing=block.hr_spacing[1], hr_spacing=block.hr_spacing[0],
                   slice_thickness=block.slice_thickness, fwhm=block.fwhm, profile=block.slice_profile,
                   preset="from the trained model", target_spacing=block.hr_spacing[0])

    def case(self, identifier: str) -> SliceGeometry:
        if identifier in self.cases:
            return SliceGeometry(**self.cases[identifier])
        return SliceGeometry(self.lr_axis, self.slice_spacing, self.in_plane_spacing, self.r, self.slice_thickness)

    def fwhm_of(self, geometry: SliceGeometry) -> float:
        """A case's slice-profile FWHM in its own HR voxels."""
        return profile_fwhm_in_voxels(geometry.slice_thickness, geometry.hr_spacing)

    @property
    def ratios(self) -> List[int]:
        """Every r among the cases, the dataset's first (its self-SR network is trained first; the others start
        from it)."""
        others = sorted({c["r"] for c in self.cases.values()} - {self.r})
        return [self.r] + others

    def same_dataset_values(self, other: "Stage1Settings") -> bool:
        keep = ("target_spacing", "cases")
        return ({k: v for k, v in asdict(self).items() if k not in keep} ==
                {k: v for k, v in asdict(other).items() if k not in keep})


def lr_first(array: np.ndarray, lr_axis: int, channel_first: bool = True) -> np.ndarray:
    """Move the thick axis (sitk index order) of a (C,) z, y, x array to the front of the spatial axes."""
    offset = 1 if channel_first else 0
    return np.moveaxis(array, offset + numpy_axis_of(lr_axis), offset)


def lr_first_spacing(spacing: Tuple[float, ...], lr_axis: int) -> List[float]:
    """A grid's spacing (sitk order) in the axis order of `lr_first` arrays: the thick axis, then the others."""
    numpy_order = list(spacing)[::-1]
    axis = numpy_axis_of(lr_axis)
    return [float(numpy_order[axis])] + [float(v) for a, v in enumerate(numpy_order) if a != axis]


def lr_first_inverse(array: np.ndarray, lr_axis: int, channel_first: bool = True) -> np.ndarray:
    offset = 1 if channel_first else 0
    return np.moveaxis(array, offset, offset + numpy_axis_of(lr_axis))


def intensity_range(image: np.ndarray) -> np.ndarray:
    """Per-channel (min, max); the self-SR works on [0, 1] and writes back on the input's own scale."""
    lo = image.reshape(image.shape[0], -1).min(1)
    hi = image.reshape(image.shape[0], -1).max(1)
    return np.stack([lo, np.where(hi > lo, hi, lo + 1)], axis=1).astype(np.float32)


def to_unit(image: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    return (image - ranges[:, :1, None, None]) / (ranges[:, 1:, None, None] - ranges[:, :1, None, None])


def from_unit(image: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    return image * (ranges[:, 1:, None, None] - ranges[:, :1, None, None]) + ranges[:, :1, None, None]


# a slice thicker than this many slice spacings overlaps its neighbours by more than a slab sequence acquires: a typo
# (or the spacing and thickness swapped) more likely than data
MAX_THICKNESS_PER_SPACING = 2.0


def case_thicknesses(dataset_json: dict, identifiers: List[str], slice_thickness: Optional[float],
                     source: str) -> Dict[str, Optional[float]]:
    """Each case's slice thickness (mm) or None (its slice spacing): -slice_thickness for every case, else the
    dataset.json rehrseg entry `slice_thickness`, one number or {case: mm} (NIfTI headers carry no thickness)."""
    given = slice_thickness if slice_thickness is not None else dataset_json.get("rehrseg", {}).get("slice_thickness")
    if given is None:
        return {k: None for k in identifiers}
    if isinstance(given, dict):
        unknown = sorted(set(given) - set(identifiers))
        if unknown:
            raise InputError(f"{source}/dataset.json: rehrseg.slice_thickness names cases {unknown[:5]} that are not "
                             f"training cases; fix the identifiers (imagesTr names without _0000 and the ending)")
        values = {k: given.get(k) for k in identifiers}
    else:
        values = {k: given for k in identifiers}
    for k, v in values.items():
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
            raise InputError(f"{source}/dataset.json: slice thickness {v!r} of case {k}; give a positive number of "
                             f"mm (or -slice_thickness)")
    return {k: None if v is None else float(v) for k, v in values.items()}


def derive_settings(cases: List[LoadedCase], dataset_json: dict, preset: str, r: Optional[int],
                    target_spacing: Optional[float], slice_thickness: Optional[float], profile: Optional[str],
                    source: str) -> Tuple[Stage1Settings, Optional[str]]:
    """The dataset's geometry: one HR target spacing (the median in-plane spacing unless -target_spacing, or -r for
    the median slice spacing), and per case its thick axis, r = round(its slice spacing / target) and thickness."""
    spacings = {c.identifier: c.grid.spacing for c in cases}
    user = dataset_json.get("rehrseg", {})
    # the target first, from every case's largest spacing (the thick axis) and the others (in-plane)
    try:
        thick = {k: float(max(s)) for k, s in spacings.items()}
        in_plane_all = [float(v) for s in spacings.values() for v in sorted(s)[:2]]
    except ValueError:
        raise InputError(f"{source}: cases without spacing") from None
    slice_spacing = float(np.median(list(thick.values())))
    in_plane = float(np.median(in_plane_all))
    asked_r = r if r is not None else user.get("r")
    asked_target = target_spacing if target_spacing is not None else user.get("target_spacing")
    try:   # the median case must be thick-sliced against the target (the message names the flags that change it)
        r, hr_spacing, _ = resolve_scale(slice_spacing, in_plane, asked_r, asked_target)
    except ValueError as e:
        raise InputError(f"{source}: {e} (slice spacing {slice_spacing:.4g} mm, in-plane {in_plane:.4g} mm); pass "
                         f"-r 2 or more, or a -target_spacing below the slice spacing") from None
    target = float(asked_target) if (asked_r is None and asked_target is not None) else \
        (in_plane if asked_r is None else hr_spacing)
    thicknesses = case_thicknesses(dataset_json, list(spacings), slice_thickness, source)
    geometries = {}
    for case in cases:
        geometry = slice_geometry(case.grid.spacing, target, f"case {case.identifier} ({case.grid.spacing} mm)",
                                  thicknesses[case.identifier])
        if geometry.slice_thickness > MAX_THICKNESS_PER_SPACING * geometry.slice_spacing:
            raise InputError(f"case {case.identifier}: slice thickness {geometry.slice_thickness:g} mm is more than "
                             f"{MAX_THICKNESS_PER_SPACING:g} x its slice spacing {geometry.slice_spacing:g} mm; fix "
                             f"its rehrseg.slice_thickness in dataset.json")
        geometries[case.identifier] = geometry
    axes = [g.axis for g in geometries.values()]
    lr_axis = int(np.bincount(axes).argmax())
    # the dataset's r and HR spacing (what the segmenter is planned for): its median case's, so that with one slice
    # spacing they are that spacing's exactly
    ratios = sorted(g.r for g in geometries.values())
    r = ratios[len(ratios) // 2]
    hr_spacing = float(np.median([g.hr_spacing for g in geometries.values()]))
    thickness = float(np.median([g.slice_thickness for g in geometries.values()]))
    if slice_thickness is None and user.get("slice_thickness") is None:
        thickness = slice_spacing        # as folders written before per-case geometry recorded it
    profile = profile or user.get("slice_profile", "gaussian")
    if profile not in SLICE_PROFILES:
        raise InputError(f"{source}: unknown slice profile '{profile}'; choose one of {SLICE_PROFILES}")
    fwhm = profile_fwhm_in_voxels(thickness, hr_spacing)
    settings = Stage1Settings(r, lr_axis, slice_spacing, in_plane, hr_spacing, thickness, fwhm, profile, preset,
                              target, {k: g.to_dict() for k, g in geometries.items()})
    off = {k: g for k, g in geometries.items() if abs(g.slice_spacing / target - g.r) > SCALE_WARNING_FRACTION * g.r}
    warning = None
    if off:
        warning = (f"slice spacing / target spacing {target:.4g} mm is not an integer for {len(off)} case(s) (e.g. "
                   + ", ".join(f"{k}: {g.slice_spacing:.4g} mm -> r={g.r}, HR spacing {g.hr_spacing:.4g} mm"
                               for k, g in list(off.items())[:3])
                   + "): their HR grids keep their field of view and lie off the target; -target_spacing changes it")
    others = sorted({g.r for g in geometries.values()} - {r})
    if others or any(a != lr_axis for a in axes):
        logger.info("per-case geometry: r %s (dataset r=%d at HR spacing %.4g mm); %d case(s) with another thick "
                    "axis than %d", sorted({g.r for g in geometries.values()}), r, hr_spacing,
                    sum(a != lr_axis for a in axes), lr_axis)
    return settings, warning


def _check_settings(stage1: Stage1Folder, settings: Stage1Settings) -> Stage1Settings:
    """The settings to run with: these, written first; or a previous run's, which they must match (a folder written
    before per-case geometry keeps its dataset values for every case, as its finished cases were made)."""
    folder, settings_file = stage1.root, stage1.settings
    if settings_file.is_file():
        previous = Stage1Settings.load(settings_file)
        # a folder written before per-case geometry: its dataset values must match (its cases then use them)
        if previous != settings and not (not previous.cases and previous.same_dataset_values(settings)):
            raise InputError(f"{settings_file} holds other stage-1 settings ({previous}); delete {folder} to start "
                             f"over with the new ones")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = settings_file.with_suffix(".partial")
        tmp.write_text(json.dumps(asdict(settings), indent=1))
        tmp.replace(settings_file)
    return settings


def write_super_resolved(case: LoadedCase, result: Dict[str, np.ndarray], ranges: np.ndarray, axis: int, r: int,
                         paths: Dict[str, object]) -> None:
    """Write pseudo-HR image channels, labels (if requested), U and the labels' class probabilities (if given, as
    uint8 levels) on the HR grid derived from the LR header (its thick axis `axis`, SimpleITK order, r thin slices
    per thick one), in the case's own orientation."""
    grid = hr_grid(case.grid, axis, r)
    image = lr_first_inverse(from_unit(result["image"], ranges), axis)
    for c, path in enumerate(paths["images"]):
        write_image(image[c].astype(np.float32), grid, path)
    if paths.get("label") is not None:
        write_image(lr_first_inverse(result["labels"], axis, False), grid, paths["label"])
    if "uncertainty" in result and paths.get("uncertainty") is not None:
        write_image(lr_first_inverse(result["uncertainty"], axis, False).astype(np.float32), grid,
                    paths["uncertainty"])
    if "soft" in result and paths.get("probabilities"):
        for levels, path in zip(quantise(result["soft"]), paths["probabilities"]):
            write_image(lr_first_inverse(levels, axis, False), grid, path)


# a self-SR network for a second (third, ...) slice spacing of a dataset starts from the dataset's own network (every
# tensor but the r-sized heads carries over) and is fine-tuned for this fraction of its iterations
OTHER_RATIO_ITERATIONS = 0.5


def selfsr_folder(stage1: Stage1Folder, settings: Stage1Settings, r: int) -> Path:
    """Where the self-SR network for r lives: the dataset's r in selfsr/ (as before per-case geometry), others beside."""
    return stage1.selfsr if r == settings.r else stage1.selfsr_of_ratio(r)


def train_selfsr_per_ratio(stage1: Stage1Folder, settings: Stage1Settings, cases: List[LoadedCase],
                           sr_cases: List[SRCase], config, device: torch.device,
                           init_checkpoint: Optional[str]) -> Dict[int, Path]:
    """One self-SR network per r among the cases ({r: final checkpoint}): each learns from every case's in-plane
    pairs (true HR detail at any ratio) and from the real thick slices of the cases acquired at its r."""
    checkpoints = {}
    for r in settings.ratios:
        own = [sr for case, sr in zip(cases, sr_cases) if settings.case(case.identifier).r == r]
        if r == settings.r:
            checkpoints[r] = train_selfsr(sr_cases, config, stage1.selfsr, device, init_checkpoint, thick_cases=own)
            continue
        fwhm = float(np.median([settings.fwhm_of(settings.case(c.identifier)) for c in cases
                                if settings.case(c.identifier).r == r]))
        ratio_config = replace(config, r=r, fwhm=fwhm,
                               iterations=max(1, int(round(config.iterations * OTHER_RATIO_ITERATIONS))))
        logger.info("self-SR for r=%d (%d case(s)), fine-tuned from the r=%d network for %d iterations", r, len(own),
                    settings.r, ratio_config.iterations)
        checkpoints[r] = train_selfsr(sr_cases, ratio_config, selfsr_folder(stage1, settings, r), device,
                                      str(checkpoints[settings.r]), thick_cases=own)
    return checkpoints


def run_stage1(dataset_name_or_id, device: torch.device, preset: str = "fast", r: Optional[int] = None,
               target_spacing: Optional[float] = None, slice_thickness: Optional[float] = None,
               profile: Optional[str] = None, num_processes: int = 2, init_checkpoint: Optional[str] = None,
               num_parts: int = 1, part_id: int = 0, video_prior: Optional[str] = None, **config_overrides) -> Path:
    """Run (or resume) stage 1; returns the stage-1 folder. With num_parts > 1 the self-SR is trained once (by part
    0) and each part generates the pseudo-HR data of its share of the cases (nnU-Net's cases[part_id::num_parts]);
    the call that finds every case done writes the QC summary, dataset.json and summary.json: parts together equal
    one run."""
    t0 = time.time()
    dataset: RawDataset = open_raw_dataset(dataset_name_or_id)
    # validate and read everything before the first write
    with ThreadPoolExecutor(max(1, num_processes)) as pool:
        cases = list(tqdm(pool.map(lambda c: load_case(dataset, c), dataset.cases.values()), total=len(dataset.cases),
                          desc="reading LR cases", leave=False))
    source = str(dataset.folder)
    settings, warning = derive_settings(cases, dataset.dataset_json, preset, r, target_spacing, slice_thickness,
                                        profile, source)
    if warning:
        logger.warning(warning)
    geometries = {c.identifier: settings.case(c.identifier) for c in cases}
    lr_cases = [lr_first(c.image, geometries[c.identifier].axis) for c in cases]
    window = config_overrides.get("window") or 4
    for case, image in zip(cases, lr_cases):
        if image.shape[1] < window:
            raise InputError(f"{case.identifier}: {image.shape[1]} thick slice(s), fewer than the self-SR window "
                             f"({window}); such volumes cannot be super-resolved")
        if min(image.shape[2:]) < window * max(settings.ratios):
            raise InputError(f"{case.identifier}: in-plane size {image.shape[2:]} is too small to make training "
                             f"pairs at r={max(settings.ratios)} (needs >= {window * max(settings.ratios)} voxels)")
    if init_checkpoint and not Path(init_checkpoint).is_file():
        raise InputError(f"{init_checkpoint}: initialisation checkpoint not found; check -init_checkpoint")
    try:
        prior_weights = find_rife_weights(video_prior)
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    stage1 = Stage1Folder.of(dataset.name)
    settings = _check_settings(stage1, settings)
    geometries = {c.identifier: settings.case(c.identifier) for c in cases}
    logger.info("stage 1 on %s: %d cases, LR axis %d, r=%d, HR spacing %.4g mm, profile %s (FWHM %.3g HR voxels)",
                dataset.name, len(cases), settings.lr_axis, settings.r, settings.hr_spacing, settings.profile,
                settings.fwhm)

    ranges = [intensity_range(image) for image in lr_cases]
    sr_cases = [SRCase(to_unit(image, rng), lr_first(c.labels, geometries[c.identifier].axis, False))
                for image, rng, c in zip(lr_cases, ranges, cases)]
    num_classes = dataset.num_label_classes      # the ignore label, if any, is a class of its own here
    frame_planes = [(settings.r * c.image.shape[1], min(c.image.shape[2:])) for c in sr_cases]
    config = configure(preset, device.type, dataset.num_channels, num_classes, settings.r, settings.fwhm,
                       settings.profile, frame_planes, **config_overrides)
    if part_id > 0 and not all((selfsr_folder(stage1, settings, r) / SELFSR_FINAL).is_file() for r in settings.ratios):
        raise InputError(f"{stage1.selfsr_final} not found: the self-SR is trained once, by part 0 (rehrseg_selfsr "
                         f"-d {dataset_name_or_id} -num_parts {num_parts} -part_id 0, or without -num_parts); run "
                         f"the other parts after it")
    t_train = time.time()
    checkpoints = train_selfsr_per_ratio(stage1, settings, cases, sr_cases, config, device, init_checkpoint)
    if prior_weights is not None:
        fit_video_prior(prior_weights, stage1, sr_cases, settings, config, device, part_id, num_parts)
    train_seconds = time.time() - t_train
    networks = {r: TrainedSelfSR(*load_network(path, device)) for r, path in checkpoints.items()}
    net = networks[settings.r].network
    todo = [(case, sr_case, rng) for case, sr_case, rng in list(zip(cases, sr_cases, ranges))[part_id::num_parts]
            if not _case_done(stage1, case.identifier, dataset.num_channels, num_classes)]
    older = [c.identifier for c, _, _ in todo if stage1.case_qc(c.identifier).is_file()]
    if older:
        logger.info("%d case(s) written before stage 1 wrote the class probabilities (soft pseudo-HR targets): "
                    "generated again by the trained self-SR", len(older))
    # decided once, before the first case is written; a folder whose cases were all written keeps what it has
    sources = label_sources_for(stage1, net, cases, sr_cases, settings, config, dataset.label_values, device,
                                decide=len(older) < len(todo))

    t_infer = time.time()
    job = GenerationJob(stage1.root, settings, dataset.num_channels, dataset.label_values,
                        prior_weights is not None, config.video_prior_weight, sources, dataset.ignore_label)
    montage_rows = []
    progress = tqdm(total=len(todo), desc=f"pseudo-HR data (part {part_id + 1} of {num_parts})")

    def done(row) -> None:
        if len(montage_rows) < 4:
            montage_rows.append(row)
        progress.update()
    t_case = time.time()
    if todo:       # the first case in this process: its time says whether worker processes pay for their start-up
        done(job.generate(networks, device, *todo[0]))
    rest, per_case = todo[1:], time.time() - t_case
    workers = min(num_processes, len(rest)) if device.type == "cpu" else 1
    if workers > 1 and per_case * len(rest) * (1 - 1 / workers) > WORKER_START_SECONDS:
        # as nnU-Net's preprocessing: worker processes, the cores shared among them
        threads = max(1, torch.get_num_threads() // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_generation_worker,
                                 initargs=({r: str(c) for r, c in checkpoints.items()}, threads)) as pool:
            for future in as_completed([pool.submit(_generate_in_worker, job, *item) for item in rest]):
                done(future.result())
    else:
        for item in rest:
            done(job.generate(networks, device, *item))
    progress.close()
    infer_seconds = time.time() - t_infer

    per_case = {c.identifier: stage1.case_qc(c.identifier) for c in cases}
    if not all(f.is_file() for f in per_case.values()):
        logger.info("part %d of %d done; stage 1 completes when every part has run (the last writes summary.json)",
                    part_id + 1, num_parts)
        return stage1.root
    records = {k: json.loads(f.read_text()) for k, f in per_case.items()}
    qc = {k: {int(label): v for label, v in r["lr_dice"].items()} for k, r in records.items()}
    # records of stage-1 folders from before the written labels were scored: made consistent by the same rule
    written = {k: {int(label): v for label, v in r.get("written_lr_dice", {}).items()} for k, r in records.items()}
    relabelled = {k: r["relabelled"] for k, r in records.items()}
    volumes = {k: r["volumes"] for k, r in records.items()}

    mean_dice = {str(k): float(np.mean([v[k] for v in qc.values()])) for k in dataset.label_values[1:]}
    written_min = ({str(k): float(min(v[k] for v in written.values())) for k in dataset.label_values[1:]}
                   if all(written.values()) else {})
    stage1.qc.mkdir(exist_ok=True)
    write_json_atomic(stage1.qc / "lr_dice.json", {"per_case": qc, "mean_per_label": mean_dice,
                                                 "mean": float(np.mean(list(mean_dice.values()))),
                                                 "written_per_case": written, "written_min_per_label": written_min,
                                                 "label_sources": sources.chosen,
                                                 "hr_fraction_relabelled_to_agree": relabelled,
                                                 "pseudo_hr_volumes": volumes})
    # the network's own labels, before each label's source is chosen and the labels are made consistent: how well the
    # self-SR alone agrees with the annotation (the written labels agree exactly: written_min_per_label)
    for identifier, scores in qc.items():
        logger.info("QC %s: LR Dice of the self-SR's own labels degraded back = %s", identifier,
                    ", ".join(f"{k}: {v:.3f}" for k, v in scores.items()))
    if written_min:
        logger.info("QC: the written pseudo-HR labels degraded back, lowest LR Dice per label = %s (1 by construction)",
                    ", ".join(f"{k}: {v:.3f}" for k, v in written_min.items()))
    if montage_rows:   # the cases this call generated (a resumed or last part: its own)
        save_montage([row for row, _ in montage_rows], [name for _, name in montage_rows], stage1.qc / "montage.png",
                     title="stage-1 QC (LR axis vertical)", label_max=num_classes - 1)
    _write_pseudo_dataset_json(stage1, dataset, settings, len(cases))
    write_json_atomic(stage1.summary, {"settings": asdict(settings), "selfsr": config.to_dict(),
                                       "video_prior": None if prior_weights is None else prior_weights.name,
                                          "cases": len(cases), "qc_mean_lr_dice": mean_dice,
                                          "seconds": {"train": train_seconds, "pseudo_data": infer_seconds,
                                                      "total": time.time() - t0}})
    return stage1.root


def _case_done(stage1: Stage1Folder, identifier: str, num_channels: int, num_classes: int) -> bool:
    paths = stage1.pseudo_hr_case(identifier, num_channels)
    written = [Path(p) for p in paths["images"] + [paths["label"], paths["uncertainty"]]]
    written += stage1.pseudo_hr_probabilities(identifier, num_classes)
    return stage1.case_qc(identifier).is_file() and all(p.is_file() for p in written)


@dataclass
class GenerationJob:
    """What every case's pseudo-HR generation needs besides the network (picklable, for worker processes)."""
    stage1_root: Path
    settings: Stage1Settings
    num_channels: int
    label_values: List[int]
    video_prior: bool = False          # stage1.video_prior holds the fine-tuned frame interpolator
    video_prior_weight: float = 0.0
    sources: Optional[LabelSources] = None     # None: the self-SR's probabilities for every label
    ignore_label: Optional[int] = None

    @property
    def num_classes(self) -> int:
        return max(self.label_values + ([self.ignore_label] if self.ignore_label is not None else [])) + 1

    def annotated_dice(self, hr_labels: np.ndarray, lr_labels: np.ndarray, r: int) -> Dict[int, float]:
        """Per label, Dice of HR labels degraded back (thick-slice majority) against the annotation, where it is
        annotated (ignored voxels count for neither side)."""
        back_to_lr = majority_labels(hr_labels, 0, r, num_classes=self.num_classes)
        if self.ignore_label is not None:
            back_to_lr = np.where(lr_labels == self.ignore_label, lr_labels, back_to_lr)
        return dice_per_label(back_to_lr, lr_labels, self.label_values[1:])

    def generate(self, networks: Dict[int, TrainedSelfSR], device: torch.device, case: LoadedCase, sr_case: SRCase,
                 rng: np.ndarray):
        """Pseudo-HR image, labels and uncertainty of one case written (by the self-SR network of its r, on its own HR
        grid), with its QC record; returns its montage row."""
        stage1 = Stage1Folder(self.stage1_root)
        geometry = self.settings.case(case.identifier)
        r, num_classes = geometry.r, self.num_classes
        result = networks[r].super_resolve_case(sr_case.image, sr_case.labels, device,
                                                self.settings.fwhm_of(geometry), self.settings.profile)
        if self.video_prior:
            carried = interpolate_thick_axis(_video_prior_network(stage1.video_prior, device), sr_case.image, r,
                                             sr_case.labels, num_classes, device)["probabilities"]
            w = self.video_prior_weight
            result["probabilities"] = (1 - w) * result["probabilities"] + w * carried
            result["labels"] = result["probabilities"].argmax(0).astype(np.uint8)
        # QC of the network itself: its labels degraded back against the annotation; then the written labels, from
        # each label's source, are made to agree with the annotation on the annotated thick slices
        dice = self.annotated_dice(result["labels"], sr_case.labels, r)
        sources = self.sources or LabelSources.selfsr_only(num_classes)
        interpolated = None
        if sources.needs_interpolation(num_classes):
            interpolated = interpolation_probabilities(
                sr_case.labels, r, lr_first_spacing(case.grid.spacing, geometry.axis), num_classes)
        probabilities = result["probabilities"]
        if self.ignore_label is not None:
            probabilities = keep_ignored_ignored(probabilities, sr_case.labels, r, self.ignore_label)
            interpolated = (None if interpolated is None else
                            keep_ignored_ignored(interpolated, sr_case.labels, r, self.ignore_label))
        fixed = () if self.ignore_label is None else (self.ignore_label,)
        consistent, soft, volumes = written_targets(probabilities, interpolated, sr_case.labels, r, sources,
                                                    fixed=fixed)
        written_dice = self.annotated_dice(consistent, sr_case.labels, r)
        relabelled = float(np.mean(consistent != result["labels"]))
        result["labels"], result["soft"] = consistent, soft
        write_super_resolved(case, result, rng, geometry.axis, r,
                             {**stage1.pseudo_hr_case(case.identifier, self.num_channels),
                              "probabilities": stage1.pseudo_hr_probabilities(case.identifier, num_classes)})
        case_qc = stage1.case_qc(case.identifier)
        case_qc.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(case_qc, {"lr_dice": {str(k): v for k, v in dice.items()}, "relabelled": relabelled,
                                    "written_lr_dice": {str(k): v for k, v in written_dice.items()},
                                    "volumes": volumes})
        return _montage_row(sr_case, result, r, case.identifier)


# the in-plane task of at most this many cases (spread over the dataset) decides each label's source: pooled over them,
# even the smallest structure has thousands of voxels to score, and the decision stays a small part of stage 1
MAX_DECISION_CASES = 8


def label_sources_for(stage1: Stage1Folder, net, cases: List[LoadedCase], sr_cases: List[SRCase],
                      settings: Stage1Settings, config, label_values: List[int], device: torch.device,
                      decide: bool = True) -> LabelSources:
    """Each label's source of the written labels: read from qc/label_sources.json when a previous call (or part)
    decided it, else decided on the in-plane task and written there (deterministic: every part decides alike).
    With `decide` False (nothing left to write) and no decision on disk: the self-SR alone, the rule of stage-1
    folders written before the per-label sources."""
    if config.label_sources == SELFSR_ONLY:
        return LabelSources.selfsr_only(config.num_classes)
    if stage1.label_sources.is_file():
        return LabelSources.from_dict(json.loads(stage1.label_sources.read_text())["sources"])
    if not decide:
        return LabelSources.selfsr_only(config.num_classes)
    picked = sorted({int(i) for i in np.linspace(0, len(cases) - 1, min(MAX_DECISION_CASES, len(cases)))})
    t = time.time()
    with tqdm(total=len(picked), desc="label sources (in-plane task)") as progress:
        sources = decide_label_sources(net, [sr_cases[i] for i in picked],
                                       [lr_first_spacing(cases[i].grid.spacing, settings.case(cases[i].identifier).axis)
                                        for i in picked],
                                       settings.r, settings.fwhm, settings.profile, label_values[1:], device,
                                       progress=progress)
    stage1.qc.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage1.label_sources, {"sources": sources.to_dict(), "cases": [cases[i].identifier
                                                                                      for i in picked],
                                             "safety_margin": SAFETY_MARGIN, "seconds": time.time() - t})
    logger.info("label sources (in-plane task of %d cases, %.0f s): %s", len(picked), time.time() - t,
                ", ".join(f"{k}: {v}" for k, v in sources.chosen.items()))
    return sources


_worker_networks: Dict[int, TrainedSelfSR] = {}
# what starting a generation worker costs (a Python process importing torch and loading the network): workers are
# used only when the parallel part of the remaining cases saves more than this
WORKER_START_SECONDS = 15.0
_video_prior_cache: Dict[str, object] = {}


def _video_prior_network(path: Path, device: torch.device):
    """The fine-tuned frame interpolator, loaded once per process."""
    key = f"{path}:{device}"
    if key not in _video_prior_cache:
        network = FrameInterpolator()
        network.load_state_dict(load_safe(path)["network_weights"])
        _video_prior_cache[key] = network.to(device).eval()
    return _video_prior_cache[key]


def fit_video_prior(weights: Path, stage1: Stage1Folder, sr_cases: List[SRCase], settings: Stage1Settings, config,
                    device: torch.device, part_id: int, num_parts: int) -> None:
    """RIFE's frame interpolator fine-tuned on the in-plane pairs of every case (part 0, once; the other parts read
    it), saved to the stage-1 folder."""
    if stage1.video_prior.is_file():
        return
    if part_id > 0:
        raise InputError(f"{stage1.video_prior} not found: part 0 fine-tunes the video prior; run the other parts "
                         f"after it (-num_parts {num_parts} -part_id 0 first)")
    num_classes = config.num_classes
    pairs = [InPlanePairs(c.image, c.labels, settings.r, settings.fwhm, settings.profile, num_classes)
             for c in sr_cases]
    network = load_frame_interpolator(weights, device)
    t = time.time()
    losses = finetune_frame_interpolator(network, pairs, config.video_prior_iterations, seed=config.seed,
                                         device=device, progress=True)
    logger.info("video prior (RIFE, %s) fine-tuned: %d iterations in %.0f s, image/label loss %.4f/%.4f -> %.4f/%.4f",
                weights.name, len(losses), time.time() - t, *np.mean(losses[:10], 0), *np.mean(losses[-10:], 0))
    save_atomic({"network_weights": network.state_dict(), "source": weights.name}, stage1.video_prior)


def _start_generation_worker(checkpoints: Dict[int, str], threads: int) -> None:
    global _worker_networks
    torch.set_num_threads(threads)
    _worker_networks = {r: TrainedSelfSR(*load_network(path, torch.device("cpu"))) for r, path in checkpoints.items()}


def _generate_in_worker(job: GenerationJob, case: LoadedCase, sr_case: SRCase, rng: np.ndarray):
    return job.generate(_worker_networks, torch.device("cpu"), case, sr_case, rng)


def _montage_row(sr_case: SRCase, result: Dict[str, np.ndarray], r: int, name: str):
    """A plane through the LR axis (vertical) at the middle of the last axis."""
    x = sr_case.image.shape[-1] // 2
    lr = np.repeat(sr_case.image[0, :, :, x], r, axis=0)
    lr_labels = np.repeat(sr_case.labels[:, :, x], r, axis=0)
    row = {"LR image (nearest)": lr, "pseudo-HR image": result["image"][0, :, :, x],
           "LR labels (nearest)": lr_labels, "pseudo-HR labels": result["labels"][:, :, x]}
    if "uncertainty" in result:
        row["uncertainty"] = result["uncertainty"][:, :, x]
    return row, name


def _write_pseudo_dataset_json(stage1: Stage1Folder, dataset: RawDataset, settings: Stage1Settings,
                               num_cases: int) -> None:
    dataset_json = {k: v for k, v in dataset.dataset_json.items() if k not in ("dataset", "rehrseg")}
    dataset_json.update({"numTraining": num_cases, "file_ending": PSEUDO_HR_ENDING,
                         "name": f"{dataset.name} pseudo-HR (REHRSeg stage 1)",
                         "rehrseg": {**asdict(settings), "source_dataset": dataset.name}})
    stage1.pseudo_hr.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage1.pseudo_hr / "dataset.json", dataset_json)


def load_stage1(dataset_name_or_id, device: torch.device) -> Tuple[Dict[int, TrainedSelfSR], Stage1Settings]:
    """({r: trained self-SR}, Stage1Settings) of a completed stage 1: a self-SR network per r among its cases."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"dataset {dataset_name_or_id}: {e}; check -d") from None
    stage1 = Stage1Folder.of(name)
    if not stage1.selfsr_final.is_file() or not stage1.settings.is_file():
        raise InputError(f"{stage1.selfsr_final} not found: run rehrseg_selfsr -d {dataset_name_or_id} first")
    settings = Stage1Settings.load(stage1.settings)
    networks = {}
    for r in settings.ratios:
        path = selfsr_folder(stage1, settings, r) / SELFSR_FINAL
        if path.is_file():
            networks[r] = TrainedSelfSR(*load_network(path, device))
    return networks, settings
