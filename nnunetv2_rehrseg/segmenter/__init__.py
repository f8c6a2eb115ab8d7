"""Stage 2's parts that the trainer (trainers/) assembles inside nnU-Net: pseudo-LR samples, their augmentation and
loader, the network with its HR head, the label targets and losses, structural distillation from the self-SR encoder,
and LR nnU-Net weights as a start. The plans block and preprocessing live in planners/."""
