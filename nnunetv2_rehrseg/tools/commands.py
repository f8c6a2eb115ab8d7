"""Running this environment's console scripts (ours and nnU-Net's) as a user would, with wall time and peak memory;
the output folder of a run made of them."""
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Sequence, Tuple

from nnunetv2_rehrseg.errors import InputError

logger = logging.getLogger(__name__)


def run_command(command: Sequence[str], env: Dict[str, str]) -> Tuple[float, float]:
    """A console script beside the running interpreter, its output streamed to the terminal. Returns its wall time
    in seconds and its peak memory in GB (os.wait4: this child's own maximum resident set); raises
    CalledProcessError when it fails."""
    logger.info("$ %s", " ".join(command))
    executable = Path(sys.executable).parent / command[0]
    t = time.time()
    process = subprocess.Popen([str(executable), *command[1:]], env=env)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), list(command))
    return time.time() - t, usage.ru_maxrss / 1024 ** 2


def nnunet_tree(out: Path) -> Dict[str, str]:
    """nnUNet_raw/_preprocessed/_results folders under `out`, set in this process's environment; returns a copy of
    the environment for the commands of the run."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (out / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(out / name)
    return dict(os.environ)


def clean_output(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out} is not empty; choose a new -o or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
