"""nnU-Net experiment planners of REHRSeg (installed as nnunetv2_rehrseg.planners)."""
