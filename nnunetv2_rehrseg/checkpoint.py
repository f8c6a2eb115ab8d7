"""Safe checkpoint IO: atomic writes, weights-only loading (a checkpoint never executes code)."""
import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch

# the self-SR model inside every REHRSeg fold checkpoint: nnUNetv2_export_model_to_zip carries fold checkpoints, not
# extra files, so an installed model can still super-resolve
SELFSR_CHECKPOINT_KEY = "rehrseg_selfsr"


def save_atomic(obj, path: Union[str, Path]) -> None:
    """torch.save to a writer-unique temporary name (io.writer_unique_partial), then rename: an interrupted write
    never leaves a file that looks complete, and folds copying the shared self-SR model at once never interleave."""
    from nnunetv2_rehrseg.image_io import writer_unique_partial

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = writer_unique_partial(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_safe(path: Union[str, Path], map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling errors, truncated files, foreign formats
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}. Only plain "
                         f"tensor checkpoints (torch.save of a state dict) are accepted") from e


def load_matching(module: torch.nn.Module, path: Union[str, Path]) -> Tuple[List[str], List[str]]:
    """Initialise `module` from whatever in a user-supplied checkpoint matches by name and shape.

    Returns (loaded, skipped) parameter names. Accepts a raw state dict or one nested under a common key.
    """
    state = load_safe(path)
    for key in ("network_weights", "state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own: Dict[str, torch.Tensor] = module.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(matching, strict=False)
    skipped = sorted(set(own) - set(matching))
    return sorted(matching), skipped


def _numpy_scalar_globals() -> list:
    import numpy as np
    import numpy.dtypes

    return [np._core.multiarray.scalar, np.dtype] + [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes)
                                                     if n.endswith("DType")]


def load_trained_checkpoint(path: Union[str, Path], map_location="cpu") -> dict:
    """An nnU-Net trainer checkpoint, weights-only: its logger keeps numpy scalars, which are allow-listed (they
    only rebuild numbers); anything else that would run code is refused."""
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
