"""The benchmark's arms: the demo's and the rest."""
from nnunetv2_rehrseg.demo.arms import ARMS, REHRSEG_FROM_BASELINE

WRONG_PROFILE = "rf-pulse-slr"       # the data are simulated with the Gaussian profile

BENCHMARK_ARMS = {
    **{k: v for k, v in ARMS.items() if k != "rehrseg"},
    "lr_nnunet_mci": "(1c) LR nnU-Net, labels by ITK's morphological contour interpolation to HR",
    "interp_then_segment": "(3) interpolate-then-segment (B-spline image, linear labels -> nnU-Net at HR)",
    "sr_then_segment": "(4) SR-then-segment (self-SR pseudo-HR data -> nnU-Net at HR)",
    "rehrseg": "(5) REHRSeg (this plugin)",
    "rehrseg_from_lr": REHRSEG_FROM_BASELINE,
    "rehrseg_noKD": "(5) REHRSeg without KD",
    "rehrseg_noUncertainty": "(5) REHRSeg without uncertainty weighting",
    "rehrseg_noPseudoData": "(5) REHRSeg without pseudo-data (real LR phase only)",
    "rehrseg_paperR5": "(5) REHRSeg with the paper's R5 (weighted CE, no Dice term)",
    "rehrseg_noResidualHead": "(5) REHRSeg with an HR head that is not a correction of the LR logits",
    "rehrseg_transposedHead": "(5) REHRSeg with the first HR head form (transposed conv, 3x3x3 conv on the HR grid)",
    "rehrseg_kdEveryStep": "(5) REHRSeg distilling on every step (default: every 4th at 4x the weights)",
    "hr_upper_bound": "(6) HR upper bound (nnU-Net on true HR images and labels)",
    "rehrseg_wrong_profile": f"REHRSeg told the wrong slice profile ({WRONG_PROFILE}; data: Gaussian)",
}

# the arms a user has without REHRSeg that take an LR segmentation to HR (the goals' reference; 2 and 2b are oracles:
# the test subjects' own LR labels)
LR_ONLY_ARMS = ("lr_nnunet_linear", "lr_nnunet_nearest", "lr_nnunet_shape", "lr_nnunet_mci", "label_round_trip",
                "label_round_trip_shape")
