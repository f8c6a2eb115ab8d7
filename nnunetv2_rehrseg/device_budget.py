"""One rule for the defaults that size the work: the GPU budget on CUDA, the CPU budget elsewhere (CPU, MPS).

Stage 1's self-SR preset, the segmenter's planner and the demo's preset all follow it; each command logs the choice
once, with the flag that changes it. Plans made on a CPU machine for training on a GPU one: pass the GPU value."""
import logging
from typing import Dict, Optional

logger = logging.getLogger(__name__)

GPU, CPU = "GPU", "CPU"
STAGE1_PRESET = {GPU: "default", CPU: "fast"}
PLANNER = {GPU: "ExperimentPlanner", CPU: "REHRSegPlannerCPU"}
DEMO_PRESET = {GPU: "default", CPU: "fast"}


def budget_of(device_type: str) -> str:
    return GPU if device_type == "cuda" else CPU


def default_for(given: Optional[str], choices: Dict[str, str], device_type: str, flag: str, what: str) -> str:
    """`given` when set; else the choice for the device's budget, logged with how to take the other one."""
    if given is not None:
        return given
    budget = budget_of(device_type)
    other = CPU if budget == GPU else GPU
    logger.info("%s: %s %s, the %s budget (device %s); %s %s for the %s budget", what, flag, choices[budget], budget,
                device_type, flag, choices[other], other)
    return choices[budget]
