"""Running this environment's console scripts (ours and nnU-Net's) as a user would, with wall time and peak memory."""
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Sequence, Tuple

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
