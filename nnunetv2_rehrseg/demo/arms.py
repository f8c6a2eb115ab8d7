"""The demo's arms and dataset: names shared by the demo, its report and the benchmark (which adds its own)."""
DATASET_ID = 700
BASELINE_PLANS = "nnUNetPlans_rehrsegLR"

ARMS = {"lr_nnunet_linear": "(1) LR nnU-Net, softmax linearly resampled to HR",
        "lr_nnunet_nearest": "(1) LR nnU-Net, labels nearest-resampled to HR",
        "lr_nnunet_shape": "(1b) LR nnU-Net, labels shape-based interpolated to HR",
        "label_round_trip": "(2) label round-trip oracle (HR truth -> LR -> nearest)",
        "label_round_trip_shape": "(2b) label round-trip oracle (HR truth -> LR -> shape-based)",
        "rehrseg": "(5) REHRSeg (this plugin)"}

REHRSEG_FROM_BASELINE = "(5b) REHRSeg started from arm 1's checkpoint (arm 1's steps + its own)"
