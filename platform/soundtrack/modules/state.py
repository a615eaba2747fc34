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


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], error: type[Exception],
                      what: str, hint: str = "") -> None:
    """``module.load_state_dict(state, strict=True)`` after a check that names what does not fit.

    Args:
        module: the model to load into.
        state: its weights (names as ``module.state_dict()``).
        error: the exception class raised on a mismatch (the caller's SoundtrackError subclass).
        what: the start of the message (e.g. ``"<file>: VGGish weights"``).
        hint: what to do, appended to the message.

    Raises:
        error: missing or unexpected keys, or tensors of the wrong shape (the first few of
            each named, with their shapes).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise error(f"{what} do not fit the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                    f"wrong shape {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:3]]}"
                    + (f"; {hint}" if hint else ""))
    module.load_state_dict(dict(state), strict=True)
