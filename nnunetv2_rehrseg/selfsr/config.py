"""Self-SR settings and presets, self-configured from the data and the device like nnU-Net's plans."""
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence, Tuple

PRESETS = {
    # the CPU budget: small enough to train in minutes on a 2-core CPU (batch 8, 4x48x48 windows)
    "fast": dict(features=(16, 32, 64), fused_features=64, blocks_per_stage=1, patch=48, batch_size=8,
                 iterations=1200),
    # a GPU budget: wider, deeper, larger patches, longer schedule
    "default": dict(features=(32, 64, 128), fused_features=128, blocks_per_stage=2, patch=96, batch_size=16,
                    iterations=20000),
}


LABEL_SOURCE_RULES = ("auto", "self-sr")


@dataclass
class SelfSRConfig:
    image_channels: int
    num_classes: int
    r: int
    fwhm: float                        # slice profile FWHM in HR voxels
    profile: str = "gaussian"
    window: int = 4
    features: Tuple[int, ...] = (16, 32, 64)
    fused_features: int = 64
    blocks_per_stage: int = 1
    hypotheses: int = 16
    patch: int = 48
    batch_size: int = 8
    iterations: int = 1200
    uasr_fraction: float = 0.25        # last part of the schedule: UASR head fine-tuning (R4)
    learning_rate: float = 3e-3
    # image L1 on [0, 1] images is far smaller than CE + Dice: unweighted, the label terms
    # dominate the shared backbone and the image barely beats cubic interpolation (benchmarks/selfsr.py)
    image_loss_weight: float = 20.0
    label_dropout: float = 0.5         # the same model must super-resolve unlabelled images
    label_residual: bool = True        # label logits as a correction to the interpolated input labels
    checkpoint_every: int = 200
    # the thick-axis consistency term (losses.thick_axis_consistency_loss): the in-plane pairs teach the network on
    # axes it is never applied to; this term holds it to the acquired thick slices on the axis it is applied to. Its
    # weight relative to the pair loss (0: off) and its draws per iteration, each 2 side + 1 half-size windows
    thick_axis_weight: float = 1.0
    thick_axis_batch: int = 2
    # the pseudo-HR image corrected towards consistency with the acquired thick slices (degradation.back_project)
    back_projection_iterations: int = 5
    # with -video_prior: the frame interpolator's fine-tuning on the dataset's in-plane pairs, and the weight of the
    # labels its flows carry in the pseudo-HR label probabilities
    video_prior_iterations: int = 200
    video_prior_weight: float = 0.25
    # where the written pseudo-HR labels come from, per label (selfsr.label_sources): "auto" decides between the
    # self-SR and shape-based interpolation of the annotation on the in-plane task; "self-sr" takes the network's
    # probabilities for every label, volume-calibrated
    label_sources: str = "auto"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def plain_iterations(self) -> int:
        return int(round(self.iterations * (1 - self.uasr_fraction)))

    def network_kwargs(self) -> dict:
        return dict(image_channels=self.image_channels, num_classes=self.num_classes, r=self.r, window=self.window,
                    features=tuple(self.features), blocks_per_stage=self.blocks_per_stage,
                    fused_features=self.fused_features, hypotheses=self.hypotheses,
                    label_residual=self.label_residual)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SelfSRConfig":
        d = dict(d)
        d["features"] = tuple(d["features"])
        d.setdefault("label_residual", False)      # models trained before the option predicted labels from scratch
        d.setdefault("thick_axis_weight", 0.0)     # and those trained before the thick-axis term went without it
        return cls(**d)


def configure(preset: str, device_type: str, image_channels: int, num_classes: int, r: int, fwhm: float,
              profile: str, frame_plane_sizes: Sequence[Tuple[int, int]], **overrides) -> SelfSRConfig:
    """Preset values, with the patch shrunk to the smallest frame plane of the data (a multiple of the network's
    in-plane divisor) and any explicit overrides applied last."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}', choose one of {sorted(PRESETS)}")
    if preset == "default" and device_type == "cpu":
        warnings.warn("the 'default' self-SR preset is sized for a GPU; on the CPU use '-preset fast'")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    divisor = 2 ** (len(values["features"]) - 1)
    smallest = min(min(sizes) for sizes in frame_plane_sizes)
    patch = min(values["patch"], smallest // divisor * divisor)
    if patch < divisor:
        raise ValueError(f"volumes with an in-plane size of {smallest} voxels are too small for the self-SR network "
                         f"(needs >= {divisor})")
    values["patch"] = patch
    if values.get("label_sources", "auto") not in LABEL_SOURCE_RULES:
        raise ValueError(f"label_sources must be one of {LABEL_SOURCE_RULES}, got {values['label_sources']!r}")
    config = SelfSRConfig(image_channels=image_channels, num_classes=num_classes, r=r, fwhm=fwhm, profile=profile)
    return replace(config, **values)

