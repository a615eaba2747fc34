"""The one place that imports ``laion_clap`` (the HTSAT audio branch of LAION-CLAP).

Why an adapter: ``laion_clap`` 1.1.5 cannot be imported the ordinary way here.

* ``import laion_clap`` (and therefore *any* ``import laion_clap.<sub>``, because Python
  runs the parent package's ``__init__`` first) executes ``laion_clap/hook.py``, which
  imports ``training/data.py``; that module imports ``torchvision`` (not declared by the
  package, and not installable beside our CPU torch) and calls ``parse_args()`` on
  ``sys.argv`` at import time (under pytest the unknown arguments make it exit).
* ``laion_clap.clap_module/__init__`` imports ``factory`` -> ``model`` (transformers,
  ``transform.py`` -> ``torchvision.transforms``) and pretrained-weight helpers.

What we do instead (see :func:`import_htsat`): we register a private package object,
``_soundtrack_laion_clap``, whose ``__path__`` is the installed ``laion_clap/clap_module``
directory, and import only its ``htsat`` submodule through it. That runs ``htsat.py``,
``utils.py`` and ``feature_fusion.py`` and nothing else: neither ``hook.py`` (so no
``sys.argv`` parsing, no tokenizer downloads) nor the text-model code. One missing import
remains unavoidable: ``utils.py`` line 4 does ``from torchvision.ops.misc import
FrozenBatchNorm2d`` (used only by ``freeze_batch_norm_2d``, which HTSAT never calls). For
the duration of that single import we put a stub ``torchvision.ops.misc`` module in
``sys.modules`` whose ``FrozenBatchNorm2d`` raises if anything ever instantiates it, and
we remove the stub modules right after, so ``import torchvision`` elsewhere still fails
normally and libraries that probe for torchvision are not fooled. ``sys.argv`` is saved
and restored around the import and :mod:`soundtrack.env`'s defaults (``HF_HUB_OFFLINE=1``
among them) are applied again (both are belt and braces, since our import path does not
reach the code that needs them).

Besides the fixed HTSAT sizes of :func:`create_htsat`, :func:`create_htsat_from_state` builds
an HTSAT sized by a checkpoint's tensor shapes (so tiny test models load too), and
:func:`create_roberta_text_branch` / :func:`load_text_tokenizer` build LAION-CLAP's RoBERTa
text side from local directories with ``transformers`` directly (laion_clap's own ``CLAP``
class cannot be built offline: it calls ``RobertaModel.from_pretrained('roberta-base')``);
:mod:`soundtrack.models.audio_embedders` uses them for its CLAP embedder and CLAP score.

Limits found while writing this:

* HTSAT cannot be built on the ``meta`` device: torchlibrosa assigns ``.data`` of its
  STFT kernels at construction. Build it on the CPU.
* HTSAT-tiny has 31.3 M parameters; building it takes a few seconds (weight init plus
  torchlibrosa's librosa filter imports on first use).

Checkpoint format (read from laion_clap's own ``clap_module/factory.py::load_state_dict``
and ``hook.py::CLAP_Module.load_ckpt``): a ``torch.save``-d dict whose ``"state_dict"``
entry (or the dict itself) maps names to tensors; models trained with DDP prefix every
name with ``"module."``; the audio branch lives under ``"audio_branch."`` (the audio
projection under ``"audio_projection."``, the text side under ``"text_branch."`` etc.).
Our loader (:func:`load_clap_audio_state`) reads such a file with
``torch.load(..., weights_only=True)`` only (or a ``.safetensors`` file) and returns the
``audio_branch`` weights with the prefixes stripped.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import math
import os
import sys
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from soundtrack.env import apply_env_defaults
from soundtrack.modules.state import load_state_strict

#: Name under which the ``laion_clap/clap_module`` directory is imported (private, so the
#: real ``laion_clap`` package, if someone imports it elsewhere, is not shadowed).
ALIAS = "_soundtrack_laion_clap"

#: HTSAT's fixed input: 10 s at 48 kHz (``clip_samples`` of LAION-CLAP's HTSAT configs).
HTSAT_SR = 48000
HTSAT_WINDOW_SAMPLES = 480000
#: HTSAT's STFT hop (samples at 48 kHz): 480 = 10 ms, so a 10 s window has 1001 frames.
HTSAT_HOP = 480
#: HTSAT stretches the spectrogram to this many frames (spec_size 256 x freq_ratio 4).
HTSAT_TARGET_FRAMES = 1024
#: Width of HTSAT-tiny's fine-grained (per time step) embedding.
HTSAT_EMBED_DIM = {"tiny": 768, "base": 1024, "large": 2048}

_STUBBED = ("torchvision", "torchvision.ops", "torchvision.ops.misc")


@dataclass(frozen=True)
class HTSATAudioCfg:
    """The ``audio_cfg`` fields that ``create_htsat_model`` reads (LAION-CLAP HTSAT-*.json).

    Attributes:
        model_name: ``"tiny"``, ``"base"`` or ``"large"``.
        class_num: AudioSet classes of the (unused by us) classification head.
        mel_bins: mel bands of HTSAT's own front end.
        sample_rate: HTSAT's input rate (Hz).
        window_size: STFT window (samples at 48 kHz).
        hop_size: STFT hop (samples at 48 kHz).
        fmin: lowest mel frequency (Hz).
        fmax: highest mel frequency (Hz).
    """

    model_name: str = "tiny"
    class_num: int = 527
    mel_bins: int = 64
    sample_rate: int = HTSAT_SR
    window_size: int = 1024
    hop_size: int = HTSAT_HOP
    fmin: int = 50
    fmax: int = 14000


class _StubFrozenBatchNorm2d:
    """Placeholder for ``torchvision.ops.misc.FrozenBatchNorm2d`` (never used by HTSAT)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "torchvision is not installed: laion_clap's freeze_batch_norm_2d is unavailable "
            "(soundtrack only imports HTSAT, which does not need it)"
        )


@contextlib.contextmanager
def _import_guard():
    """Saves/restores ``sys.argv``, applies the offline-hub defaults and stubs torchvision briefly."""
    saved_argv = list(sys.argv)
    apply_env_defaults()  # HF_HUB_OFFLINE=1 and the rest of soundtrack.env, under the user's own values
    added = []
    if importlib.util.find_spec("torchvision") is None:
        stubs = {name: types.ModuleType(name) for name in _STUBBED}
        stubs["torchvision"].ops = stubs["torchvision.ops"]
        stubs["torchvision.ops"].misc = stubs["torchvision.ops.misc"]
        stubs["torchvision.ops.misc"].FrozenBatchNorm2d = _StubFrozenBatchNorm2d
        for name, mod in stubs.items():
            if name not in sys.modules:
                sys.modules[name] = mod
                added.append(name)
    # laion_clap 1.1.5 parses sys.argv in training/params.py when hook.py runs; give it
    # only the program name in case anything on the path reaches it.
    sys.argv = sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = saved_argv
        for name in added:
            sys.modules.pop(name, None)


@functools.lru_cache(maxsize=1)
def import_htsat() -> types.ModuleType:
    """Imports laion_clap's ``htsat`` module without running laion_clap's package code.

    Returns:
        The ``htsat`` module (has ``create_htsat_model`` and ``HTSAT_Swin_Transformer``).

    Raises:
        ImportError: if laion_clap (or its dependency torchlibrosa) is not installed.
    """
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("laion_clap is not installed (pip install laion_clap==1.1.5)")
    clap_dir = Path(next(iter(spec.submodule_search_locations))) / "clap_module"
    if not (clap_dir / "htsat.py").is_file():
        raise ImportError(f"laion_clap at {clap_dir.parent} has no clap_module/htsat.py")
    if ALIAS not in sys.modules:
        pkg = types.ModuleType(ALIAS)
        pkg.__path__ = [str(clap_dir)]
        pkg.__spec__ = importlib.machinery.ModuleSpec(ALIAS, None, is_package=True)
        pkg.__spec__.submodule_search_locations = [str(clap_dir)]
        pkg.__package__ = ALIAS
        sys.modules[ALIAS] = pkg
    with _import_guard():
        return importlib.import_module(ALIAS + ".htsat")


def create_htsat(model_name: str = "tiny") -> torch.nn.Module:
    """Builds LAION-CLAP's HTSAT audio branch with random weights (CPU, offline).

    Args:
        model_name: ``"tiny"`` (31 M parameters, LAION-CLAP's 630k-* checkpoints),
            ``"base"`` (its music checkpoints) or ``"large"``.

    Returns:
        An ``HTSAT_Swin_Transformer`` module (non-fusion variant).
    """
    htsat = import_htsat()
    with warnings.catch_warnings():
        # HTSAT's window attention calls torch.meshgrid without `indexing=` (a torch
        # deprecation warning about laion_clap's code, not ours; behaviour is "ij").
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
        return htsat.create_htsat_model(HTSATAudioCfg(model_name=model_name), enable_fusion=False)


# ----------------------------------------------------------------------------- checkpoints


def _read_state(path: Path) -> Mapping[str, torch.Tensor]:
    """Reads a checkpoint file into a name -> tensor mapping (safe loaders only)."""
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the message of the weights-only unpickler names the type
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}); "
            "re-save it as a plain state dict or as .safetensors"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    return obj


def strip_audio_branch(state: Mapping[str, torch.Tensor], prefix: str = "audio_branch.") -> dict[str, torch.Tensor]:
    """Selects the audio-branch weights of a LAION-CLAP state dict and strips prefixes.

    Accepts keys like ``module.audio_branch.layers.0...`` (DDP-trained checkpoints),
    ``audio_branch.layers.0...`` or, for a bare HTSAT state dict, ``layers.0...``.

    Args:
        state: name -> tensor mapping.
        prefix: the branch prefix to select.

    Returns:
        The HTSAT state dict (names as in ``HTSAT_Swin_Transformer.state_dict()``).
    """
    out = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith(prefix):
            out[name[len(prefix) :]] = value
    if out:
        return out
    # No branch prefix at all: assume a bare HTSAT state dict (what save_htsat writes).
    if any(k.startswith(("patch_embed.", "layers.")) for k in state):
        return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    raise ValueError(f"no '{prefix}' weights in the checkpoint (first keys: {list(state)[:5]})")


def load_clap_audio_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads the HTSAT weights of a local LAION-CLAP checkpoint (``.pt``/``.ckpt``/``.safetensors``).

    Args:
        path: checkpoint file on local disk (nothing is downloaded).

    Returns:
        The audio-branch state dict with ``module.`` / ``audio_branch.`` prefixes removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LAION-CLAP checkpoint not found: {path}")
    return strip_audio_branch(_read_state(path))


def load_htsat_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Loads a LAION-CLAP checkpoint's audio branch into an HTSAT module (strict).

    LAION-CLAP's own loader also drops ``text_branch.embeddings.position_ids``; that key
    is on the text side, which we never load. Every HTSAT key must be present: a silent
    partial load would leave random layers in a "pretrained" encoder.

    Args:
        model: an HTSAT module from :func:`create_htsat`.
        path: local checkpoint file.
    """
    state = load_clap_audio_state(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: HTSAT keys do not match (missing {missing[:5]}..., unexpected {unexpected[:5]}...); "
            "is this checkpoint for a different HTSAT size or a fusion model?"
        )
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- signal


@functools.lru_cache(maxsize=4)
def _upsample_filter(factor: int, zero_crossings: int, beta: float) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass for integer upsampling (cut-off at the old Nyquist)."""
    half = zero_crossings * factor
    n = torch.arange(-half, half + 1, dtype=torch.float64)
    # Cut-off at the input Nyquist = 1/factor of the output Nyquist; gain `factor`
    # restores the amplitude lost to zero-stuffing.
    h = torch.sinc(n / factor)
    window = torch.special.i0(beta * torch.sqrt(1 - (n / (half + 1)) ** 2)) / torch.special.i0(
        torch.tensor(beta, dtype=torch.float64)
    )
    return (h * window).to(torch.float32)


def upsample(wav: torch.Tensor, factor: int = 3, zero_crossings: int = 16, beta: float = 8.0) -> torch.Tensor:
    """Band-limited integer upsampling (16 kHz -> 48 kHz for HTSAT with ``factor=3``).

    Method: zero-stuffing by ``factor`` followed by a Kaiser-windowed sinc FIR
    (``2 * zero_crossings * factor + 1`` taps, cut-off at the input Nyquist, 8 kHz for
    16 kHz input) run as a 1-D convolution, so it is differentiable and stays on the
    tensor's device. Content above 8 kHz does not exist in 16 kHz audio, so HTSAT's
    8-14 kHz mel bands see (near) silence; LAION-CLAP's 48 kHz checkpoints were trained
    on full-band audio, which is a known domain gap of feeding them 16 kHz material.

    Args:
        wav: (..., N) waveform.
        factor: integer rate ratio (3 for 16 kHz -> 48 kHz).
        zero_crossings: sinc lobes on each side of the filter centre (at the input rate).
        beta: Kaiser window shape (8.0: about 80 dB stop-band attenuation).

    Returns:
        (..., N * factor) waveform at the higher rate.
    """
    shape = wav.shape
    x = wav.reshape(-1, 1, shape[-1])
    stuffed = torch.zeros(x.shape[0], 1, shape[-1] * factor, dtype=x.dtype, device=x.device)
    stuffed[..., ::factor] = x
    h = _upsample_filter(factor, zero_crossings, beta).to(device=x.device, dtype=x.dtype)
    y = F.conv1d(stuffed, h.view(1, 1, -1), padding=h.numel() // 2)
    return y.reshape(*shape[:-1], shape[-1] * factor)


def _repeat_fill(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Repeats a (B, N) waveform along time until it has ``length`` samples (CLAP "repeatpad")."""
    n = wav.shape[-1]
    if n >= length:
        return wav[..., :length]
    reps = math.ceil(length / n)
    return wav.repeat(1, reps)[..., :length]


def htsat_window_embeddings(model: torch.nn.Module, wav48: torch.Tensor) -> torch.Tensor:
    """HTSAT fine-grained embeddings of exactly-10-s windows at 48 kHz.

    Runs HTSAT's own front end (torchlibrosa STFT, log-mel, ``bn0``), its reshaping to the
    256 x 256 "image" and ``forward_features``, i.e. the non-fusion path of
    ``HTSAT_Swin_Transformer.forward`` without SpecAugment and mix-up (we call the same
    sub-modules directly so that training never applies HTSAT's built-in augmentation).

    Args:
        model: HTSAT module.
        wav48: (W, 480000) windows at 48 kHz.

    Returns:
        (W, 1024, C) fine-grained embeddings; index j covers time
        ``j * 1000 / 1023 * 0.01`` s of its window (HTSAT stretches its 1001 STFT frames
        to 1024 by bicubic interpolation with aligned corners). Its true resolution is 32
        tokens per window (0.31 s): each token is repeated 32 times.
    """
    return _htsat_features(model, wav48)["fine_grained_embedding"]


def _htsat_features(model: torch.nn.Module, wav48: torch.Tensor) -> dict[str, torch.Tensor]:
    """HTSAT's front end plus ``forward_features`` on (W, 480000) windows at 48 kHz (no augmentation)."""
    x = model.spectrogram_extractor(wav48)  # (W, 1, 1001, 513)
    x = model.logmel_extractor(x)  # (W, 1, 1001, 64)
    x = x.transpose(1, 3)
    x = model.bn0(x)
    x = x.transpose(1, 3)
    x = model.reshape_wav2img(x)
    return model.forward_features(x)


def htsat_sequence(
    model: torch.nn.Module, wav16: torch.Tensor, step_times_s: torch.Tensor, sr: int = 16000
) -> torch.Tensor:
    """HTSAT embeddings of 16 kHz waveforms sampled at given times (e.g. video frames).

    Windowing (MuVi App. C's treatment of fixed-length audio encoders): the waveform,
    resampled to 48 kHz by :func:`upsample`, is cut into consecutive 10 s windows; the last
    incomplete window is replaced by the last 10 s of the signal ("filling continuous
    values ahead"). A signal shorter than 10 s is repeated to 10 s (LAION-CLAP's
    "repeatpad"), so every window has the time scale the checkpoints were trained on.
    Each requested time takes the first window that covers it and is linearly
    interpolated between HTSAT's output steps.

    Args:
        model: HTSAT module.
        wav16: (B, N) waveforms at ``sr``.
        step_times_s: (T,) times in seconds (within the signal) to sample at.
        sr: input sample rate (16000; must divide 48000).

    Returns:
        (B, T, C) embeddings.
    """
    if HTSAT_SR % sr:
        raise ValueError(f"sample rate {sr} does not divide {HTSAT_SR}")
    b, n = wav16.shape
    wav48 = upsample(wav16, HTSAT_SR // sr)
    n48 = wav48.shape[-1]
    win = HTSAT_WINDOW_SAMPLES
    if n48 <= win:
        starts = [0]
        windows = _repeat_fill(wav48, win)[:, None]
    else:
        starts = list(range(0, n48 - win + 1, win))
        if starts[-1] + win < n48:
            starts.append(n48 - win)
        windows = torch.stack([wav48[:, s : s + win] for s in starts], dim=1)
    k = len(starts)
    emb = htsat_window_embeddings(model, windows.reshape(b * k, win))
    emb = emb.reshape(b, k, emb.shape[1], emb.shape[2])  # (B, K, 1024, C)

    t = step_times_s.to(torch.float64).cpu()
    start_s = torch.tensor(starts, dtype=torch.float64) / HTSAT_SR
    win_s = win / HTSAT_SR
    # Window of each time: the regular window that covers it; times past the last
    # regular window go to the final (filled) window, which then ends at the signal end.
    n_regular = k - 1 if (n48 > win and starts[-1] % win) else k
    idx = torch.div(t, win_s, rounding_mode="floor").long().clamp(0, n_regular - 1)
    if n_regular < k:
        idx = torch.where(t >= n_regular * win_s, torch.full_like(idx, k - 1), idx)
    local = t - start_s[idx]
    # Output index j of a window sits at j * step seconds (see htsat_window_embeddings).
    frames_in_window = win // HTSAT_HOP + 1  # 1001 centred STFT frames
    step = (frames_in_window - 1) / (HTSAT_TARGET_FRAMES - 1) * HTSAT_HOP / HTSAT_SR
    pos = (local / step).clamp(0, HTSAT_TARGET_FRAMES - 1)
    lo = pos.floor().long().clamp(max=HTSAT_TARGET_FRAMES - 2)
    frac = (pos - lo.to(torch.float64)).to(emb.dtype)
    idx_d = idx.to(emb.device)
    lo_d = lo.to(emb.device)
    a = emb[:, idx_d, lo_d]  # (B, T, C)
    c = emb[:, idx_d, lo_d + 1]
    frac = frac.to(emb.device)[None, :, None]
    return a * (1 - frac) + c * frac


def htsat_clip_embeddings(model: torch.nn.Module, wav48: torch.Tensor) -> torch.Tensor:
    """HTSAT's pooled ``"embedding"`` output of exactly-10-s windows at 48 kHz.

    This is the audio-branch output that LAION-CLAP feeds to ``audio_projection``
    (``CLAP.get_audio_embedding``), computed without SpecAugment or mix-up.

    Args:
        model: HTSAT module (eval mode).
        wav48: (W, 480000) windows at 48 kHz.

    Returns:
        (W, C) embeddings (C = 768 for HTSAT-tiny: the last stage's width).
    """
    return _htsat_features(model, wav48)["embedding"]


# ----------------------------------------------------------------------------- sizes from weights


def select_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a (possibly DDP-prefixed) LAION-CLAP state dict under ``prefix``, prefix removed.

    Args:
        state: name -> tensor mapping (``module.`` prefixes allowed).
        prefix: e.g. ``"audio_projection."`` or ``"text_branch."``.

    Returns:
        The selected entries (empty when there are none).
    """
    out = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith(prefix):
            out[name[len(prefix) :]] = value
    return out


def htsat_kwargs_from_state(state: Mapping[str, torch.Tensor]) -> dict:
    """The ``HTSAT_Swin_Transformer`` sizes that produce the shapes of an HTSAT state dict.

    Read from the shapes: ``embed_dim`` (``patch_embed.proj.weight`` rows), ``patch_size``
    (its kernel), ``depths`` (blocks per ``layers.i``), ``num_heads`` (columns of each
    stage's ``relative_position_bias_table``), ``window_size`` (its (2w-1)^2 rows),
    ``mlp_ratio`` (``mlp.fc1`` rows / width) and ``num_classes`` (``head.weight``). The
    patch stride is taken equal to the patch size and the spectrogram "image" is 256 x
    256, as in every LAION-CLAP HTSAT config (tiny / base / large differ only in the
    sizes above). A tiny test model built with other sizes is therefore loadable too.

    Args:
        state: bare HTSAT state dict (see :func:`strip_audio_branch`).

    Returns:
        Keyword arguments for ``HTSAT_Swin_Transformer``.

    Raises:
        KeyError: a key every HTSAT has is missing (the message names it).
    """
    for key in ("patch_embed.proj.weight", "head.weight", "layers.0.blocks.0.attn.relative_position_bias_table"):
        if key not in state:
            raise KeyError(f"HTSAT weights lack {key!r}")
    proj = state["patch_embed.proj.weight"]  # (embed_dim, 1, patch, patch)
    depths, heads = [], []
    i = 0
    while f"layers.{i}.blocks.0.attn.relative_position_bias_table" in state:
        j = 0
        while f"layers.{i}.blocks.{j}.norm1.weight" in state:
            j += 1
        depths.append(j)
        heads.append(int(state[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]))
        i += 1
    table_rows = int(state["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])
    window = (round(math.sqrt(table_rows)) + 1) // 2
    fc1 = state["layers.0.blocks.0.mlp.fc1.weight"]
    patch = int(proj.shape[-1])
    return {
        "spec_size": 256,
        "patch_size": patch,
        "patch_stride": (patch, patch),
        "num_classes": int(state["head.weight"].shape[0]),
        "embed_dim": int(proj.shape[0]),
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "mlp_ratio": float(fc1.shape[0]) / float(fc1.shape[1]),
    }


def create_htsat_from_state(state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Builds an HTSAT sized by a state dict's shapes and loads it strictly (eval mode, CPU).

    Args:
        state: bare HTSAT state dict (``audio_branch.`` / ``module.`` removed).

    Returns:
        The loaded ``HTSAT_Swin_Transformer``.

    Raises:
        KeyError: a key every HTSAT has is missing.
        ValueError: the keys do not match the inferred architecture (lists the first ones).
    """
    kwargs = htsat_kwargs_from_state(state)
    htsat = import_htsat()
    mel_bins = int(state["logmel_extractor.melW"].shape[1]) if "logmel_extractor.melW" in state else 64
    cfg = HTSATAudioCfg(class_num=kwargs["num_classes"], mel_bins=mel_bins)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
        model = htsat.HTSAT_Swin_Transformer(config=cfg, enable_fusion=False, fusion_type="None", **kwargs)
    load_state_strict(model, state, ValueError, f"HTSAT keys (architecture inferred from their shapes: {kwargs})",
                      "a fusion checkpoint, or a PANN audio branch, is not supported")
    return model.eval()


# ----------------------------------------------------------------------------- text branch
#
# LAION-CLAP's text side cannot be built through laion_clap offline: ``CLAP.__init__``
# (clap_module/model.py) calls ``RobertaModel.from_pretrained('roberta-base')`` (a Hub
# download, refused under HF_HUB_OFFLINE=1), and importing model.py pulls timm_model /
# open_clip-era helpers besides. Its text branch *is* a plain ``transformers.RobertaModel``
# whose state-dict names LAION-CLAP stores under ``text_branch.``, followed by
# ``text_projection`` = Sequential(Linear(768, 512), ReLU, Linear(512, 512)); so we build
# that RobertaModel from a local config directory and load the checkpoint's own
# ``text_branch.*`` weights into it (the CLAP fine-tuned ones, not roberta-base's).


def create_roberta_text_branch(config_dir: str | os.PathLike, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """LAION-CLAP's RoBERTa text branch from a local config and a checkpoint's weights (strict).

    Args:
        config_dir: local directory with the RoBERTa ``config.json`` (e.g. a roberta-base
            snapshot); only its architecture is used, never its weights.
        state: the checkpoint's ``text_branch.`` entries with the prefix removed. The
            ``embeddings.position_ids`` buffer that transformers 4.x saved is ignored
            (LAION-CLAP's own loader drops it too).

    Returns:
        A ``transformers.RobertaModel`` with a pooler, in eval mode.

    Raises:
        ValueError: the config is not a RoBERTa one, or the weights do not fit it.
    """
    from transformers import AutoConfig, RobertaModel

    apply_env_defaults()
    config = AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
    if config.model_type != "roberta":
        raise ValueError(
            f"{config_dir}: model_type {config.model_type!r}; LAION-CLAP's released checkpoints use a "
            "'roberta' text branch (bert / bart variants are not supported)"
        )
    model = RobertaModel(config, add_pooling_layer=True)
    state = {k: v for k, v in state.items() if k != "embeddings.position_ids"}
    load_state_strict(model, state, ValueError, f"text_branch weights (the RoBERTa of {config_dir})",
                      "is config.json the one this checkpoint was trained with (roberta-base for LAION-CLAP)?")
    return model.eval()


def load_text_tokenizer(tokenizer_dir: str | os.PathLike):
    """A tokenizer from a local directory (``AutoTokenizer``, local files only).

    Args:
        tokenizer_dir: directory written by ``save_pretrained`` (roberta-base's for LAION-CLAP).

    Returns:
        The tokenizer.
    """
    from transformers import AutoTokenizer

    apply_env_defaults()
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
