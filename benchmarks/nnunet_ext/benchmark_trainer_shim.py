# nnU-Net imports every module of an nnUNet_extTrainer folder as a top-level module and drops it afterwards; the
# research trainers live (once) in benchmarks/research_trainers.py, importable as `research_trainers`.
import sys
from pathlib import Path

_BENCHMARKS = str(Path(__file__).resolve().parents[1])
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)

from research_trainers import *  # noqa: E402,F401,F403
