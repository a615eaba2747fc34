"""State-dict helpers shared by every model container's ``load``.

A model trained under ``DistributedDataParallel`` (or any wrapper holding it as
``.module``) names its weights ``module.<name>``; our checkpoints save the unwrapped
model, but a state dict written from a wrapper still loads into a bare model through
:func:`strip_module_prefix`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

#: The prefix ``DistributedDataParallel`` (and ``DataParallel``) put before every key.
WRAPPER_PREFIX = "module."


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with a leading ``module.`` removed from every key (when all keys have it).

    Args:
        state: a state dict (from ``safetensors.torch.load_file`` or ``state_dict()``).

    Returns:
        the same tensors under the bare model's names; unchanged when any key lacks the
        prefix (a bare model's own dict, which may have a submodule named ``module``).
    """
    keys = list(state)
    if keys and all(k.startswith(WRAPPER_PREFIX) for k in keys):
        return {k[len(WRAPPER_PREFIX):]: v for k, v in state.items()}
    return dict(state)
