"""Standard audio-embedding backbones from LOCAL weight files: VGGish, PANNs CNN14, LAION-CLAP.

These are the encoders that define a Frechet Audio Distance (FAD) and a CLAP score. Each is
our own implementation of the published architecture, loading the published weight
format; nothing is downloaded. Weights are read only with ``safetensors`` or
``torch.load(..., weights_only=True)``.

Specs (:func:`load_embedder`), ``kind:path[,key=value]...`` (commas separate options, so a
path must not contain one)::

    vggish:/w/vggish-10086976.pth[,pca=/w/vggish_pca_params-970ea276.pth]
    panns:/w/Cnn14_mAP=0.431.pth[,window=10]
    clap:/w/630k-audioset-best.pt[,text=/w/roberta-base,tokenizer=/w/roberta-base]

and, for every kind, ``device=cpu`` (default) or ``device=cuda``.

* **VGGish** (Hershey et al. 2017; the PyTorch port harritaylor/torchvggish): 16 kHz audio,
  25 ms periodic-Hann frames every 10 ms, |FFT| (512 points), 64 mel bands 125-7500 Hz
  (HTK mel scale, triangles in the mel domain, as in the reference ``mel_features.py``),
  ``log(mel + 0.01)``, non-overlapping 0.96 s examples of 96 x 64. Conv stages
  64-128-256x2-512x2 (3x3, ReLU, 2x2 max-pool after stages 1, 2, 4, 6), flattened in
  (time, freq, channel) order, fc 12288 -> 4096 -> 4096 -> 128, each followed by ReLU
  (torchvggish keeps the ReLU after the 128-d layer; its converted weights expect it).
  Optional post-processing (``pca=``): PCA + whitening with ``pca_eigen_vectors`` /
  ``pca_means``, clipping to [-2, 2] and 8-bit quantisation to 0..255 (returned as float,
  as torchvggish does). One embedding per 0.96 s example; a trailing part shorter than an
  example is dropped (as in the reference); a clip shorter than one example (15600
  samples at 16 kHz) is zero-padded to one.
  State dict: torchvggish's ``features.{0,3,6,8,11,13}.*`` and ``embeddings.{0,2,4}.*``.
* **PANNs CNN14** (Kong et al. 2020, qiuqiangkong/audioset_tagging_cnn ``Cnn14``): 32 kHz,
  1024-point STFT (periodic Hann, centred, reflect padding) every 320 samples (10 ms), power
  spectrum, 64 slaney mel bands 50-14000 Hz (``librosa.filters.mel``), ``10 log10(max(x,
  1e-10))``, ``bn0`` over mel bands, six conv blocks (2 x (conv3x3 + BN + ReLU), 2x2
  average pool; no pool after block 6) 64..2048 wide, mean over frequency, max + mean
  over time, ``relu(fc1)`` = the 2048-d "embedding" output (the one fadtk and
  audioldm_eval use for FAD). Checkpoint: ``torch.save({"model": state_dict, ...})``.
  The torchlibrosa front-end tensors in it (``spectrogram_extractor.stft.conv_real /
  conv_imag.weight``, ``logmel_extractor.melW``) are **recomputed**, not loaded: we check
  their shapes, and that the stored mel filterbank equals ours (so a checkpoint trained
  with another front end is refused instead of silently mis-fed). Windows: consecutive
  ``window`` seconds (default 10 s, AudioSet's clip length); a longer clip's last partial
  window is replaced by the last full window (ending at the clip end); a clip no longer
  than one window is embedded whole (CNN14 pools globally), zero-padded to 32 STFT frames
  (0.31 s) if shorter, the least its five 2x poolings need.
* **LAION-CLAP** (Wu et al. 2023, ``laion_clap`` 1.1.5): HTSAT audio branch (built by
  :mod:`soundtrack.models.clap_adapter`, sizes read from the checkpoint) + ``audio_projection``,
  unit-normalised 512-d; 48 kHz audio quantised to int16 and back (as
  ``CLAP_Module.get_audio_embedding_from_data``), 10 s windows; a shorter clip is
  "repeatpad"-ed (repeated a whole number of times, then zero-padded, LAION-CLAP's
  default); a longer one is cut into consecutive 10 s windows, the last ending at the clip
  end (LAION-CLAP itself takes one random 10 s crop, which is not reproducible). Text:
  RoBERTa (``pooler_output``) + ``text_projection``, unit-normalised; see
  :meth:`ClapEmbedder.clap_score`.

All embedders resample with ``scipy.signal.resample_poly`` (exact rational ratio,
Kaiser-windowed polyphase FIR), so results are deterministic.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from scipy.signal import resample_poly

from soundtrack.errors import BackboneError, ConfigError, MetricError
from soundtrack.models import clap_adapter
from soundtrack.modules.state import load_state_strict

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- constants

#: VGGish input: 16 kHz; 25 ms (400-sample) frames every 10 ms (160 samples); 512-point FFT.
VGGISH_SR = 16000
VGGISH_WIN = 400
VGGISH_HOP = 160
VGGISH_NFFT = 512
#: VGGish mel bands and their edges (Hz); log offset added to mel magnitudes.
VGGISH_MELS = 64
VGGISH_FMIN = 125.0
VGGISH_FMAX = 7500.0
VGGISH_LOG_OFFSET = 0.01
#: STFT frames per 0.96 s example (and the hop between examples, also frames).
VGGISH_EXAMPLE_FRAMES = 96
#: Samples (16 kHz) of one example: 400 + 95 * 160 = 15600 (0.975 s).
VGGISH_MIN_SAMPLES = VGGISH_WIN + (VGGISH_EXAMPLE_FRAMES - 1) * VGGISH_HOP
#: Indices of the conv layers in torchvggish's ``features`` Sequential (ReLU / pool between).
VGGISH_CONV_INDICES = (0, 3, 6, 8, 11, 13)
#: ... and of the linear layers in ``embeddings``.
VGGISH_FC_INDICES = (0, 2, 4)
#: Max-pools follow conv stages 1, 2, 4 and 6 (zero-based 0, 1, 3, 5).
_VGGISH_POOL_AFTER = (0, 1, 3, 5)
#: Quantisation range of the PCA-ed embedding (the reference's QUANTIZE_MIN/MAX_VAL).
VGGISH_QUANT_MIN = -2.0
VGGISH_QUANT_MAX = 2.0

#: CNN14 input: 32 kHz; 1024-point STFT every 320 samples (10 ms); 64 mel bands (Hz edges).
PANNS_SR = 32000
PANNS_NFFT = 1024
PANNS_HOP = 320
PANNS_MELS = 64
PANNS_FMIN = 50.0
PANNS_FMAX = 14000.0
#: Power floor before the dB conversion (torchlibrosa's ``amin``).
PANNS_AMIN = 1e-10
#: Default window (seconds) for CNN14: AudioSet's 10 s clips.
PANNS_WINDOW_S = 10.0
#: Fewest STFT frames the five 2x time poolings leave >= 1 of.
PANNS_MIN_FRAMES = 32
#: Conv blocks of CNN14 (block 6 is not pooled).
PANNS_BLOCKS = 6

#: LAION-CLAP: 48 kHz, 10 s windows (480000 samples), 77 text tokens (its tokenizer setting).
CLAP_SR = clap_adapter.HTSAT_SR
CLAP_WINDOW_SAMPLES = clap_adapter.HTSAT_WINDOW_SAMPLES
CLAP_MAX_TOKENS = 77
#: Windows per HTSAT forward (each 480000 samples): bounds memory.
CLAP_BATCH = 4

KINDS = ("vggish", "panns", "clap")
_SPEC_HELP = (
    "expected 'vggish:PATH[,pca=PATH]', 'panns:PATH[,window=SECONDS]' or "
    "'clap:PATH[,text=DIR,tokenizer=DIR]' (each also takes device=cpu|cuda)"
)


# ----------------------------------------------------------------------------- weight files


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces.

    Args:
        path: file path.
        chunk: bytes per read.

    Returns:
        64 hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Reads a weight file into a name -> tensor dict with the safe loaders only.

    ``.safetensors`` files go through ``safetensors``; anything else through
    ``torch.load(map_location="cpu", weights_only=True)``; ``.npz`` through
    ``np.load(allow_pickle=False)``. A checkpoint dict with a ``"model"`` (PANNs),
    ``"state_dict"`` (LAION-CLAP, Lightning) or ``"model_state_dict"`` entry is unwrapped;
    non-tensor entries beside the tensors (epoch counters, names) are dropped.

    Args:
        path: local file.
        what: what the file should be, for messages (e.g. ``"VGGish weights"``).

    Returns:
        The tensors.

    Raises:
        BackboneError: the file is missing or cannot be read safely or holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneError(f"{what} not found: {path} (give the path of a local file; nothing is downloaded)")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path), device="cpu")
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                obj = {k: torch.from_numpy(np.asarray(z[k])) for k in z.files}
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler's message names the refused type
        raise BackboneError(
            f"{path}: cannot be read as {what} with safetensors / torch.load(weights_only=True) "
            f"({type(exc).__name__}: {exc}); re-save it as a plain state dict "
            "(torch.save(model.state_dict())) or as .safetensors"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise BackboneError(f"{path}: holds a {type(obj).__name__}, not a state dict of {what}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise BackboneError(f"{path}: no tensors found; expected {what}")
    return state


def _require(state: Mapping[str, torch.Tensor], keys: Sequence[str], path: Path, what: str, hint: str) -> None:
    """Raises BackboneError naming the missing keys, the expected format and the first keys present."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise BackboneError(
            f"{path}: not {what}: missing {missing[:6]} (found {sorted(state)[:6]}...). {hint}"
        )


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes DDP's ``module.`` prefix from every key that has it."""
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


# ----------------------------------------------------------------------------- signal helpers


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resamples a mono waveform with an exact rational polyphase filter (scipy).

    Args:
        wav: (N,) waveform at ``sr`` Hz.
        sr: its rate (Hz).
        target_sr: wanted rate (Hz).

    Returns:
        (round(N * target_sr / sr),) float64 waveform at ``target_sr``.
    """
    x = np.asarray(wav, dtype=np.float64)
    if int(sr) == int(target_sr):
        return x
    g = math.gcd(int(sr), int(target_sr))
    return resample_poly(x, int(target_sr) // g, int(sr) // g)


def _check_wavs(wavs: Sequence[np.ndarray], sr: int, who: str) -> list[np.ndarray]:
    """Validates clips: 1-D, non-empty, finite, a positive integer rate."""
    if isinstance(wavs, np.ndarray) and wavs.ndim == 1:
        raise MetricError(f"{who}.embed takes a sequence of 1-D waveforms, got one array; wrap it in a list")
    if int(sr) != sr or sr <= 0:
        raise MetricError(f"{who}.embed: sample rate must be a positive integer (Hz), got {sr!r}")
    out = []
    for i, w in enumerate(wavs):
        a = np.asarray(w, dtype=np.float64)
        if a.ndim != 1:
            raise MetricError(f"{who}.embed: clip {i} has shape {a.shape}; give mono (N,) waveforms (downmix first)")
        if a.size == 0:
            raise MetricError(f"{who}.embed: clip {i} is empty")
        if not np.isfinite(a).all():
            raise MetricError(f"{who}.embed: clip {i} has non-finite samples")
        out.append(a)
    return out


def _windows(x: np.ndarray, win: int) -> np.ndarray:
    """Consecutive ``win``-sample windows covering a signal longer than ``win``; the last one
    ends at the signal end (replacing the partial window). Returns (K, win)."""
    n = x.shape[-1]
    starts = list(range(0, n - win + 1, win))
    if starts[-1] + win < n:
        starts.append(n - win)
    return np.stack([x[s : s + win] for s in starts])


# ----------------------------------------------------------------------------- the interface


class AudioEmbedder:
    """A frozen audio encoder for distribution metrics (FAD) and scores (CLAP).

    Attributes:
        name: backbone kind (``"vggish"``, ``"panns"``, ``"clap"``).
        sample_rate: the rate the backbone runs at (Hz); inputs are resampled to it.
        dim: embedding width.
        weight_files: the weight files that define it (hashed by :attr:`identity`).
        device: torch device it runs on.
    """

    name: str = ""
    sample_rate: int = 0
    dim: int = 0

    def __init__(self, weight_files: Sequence[Path], device: str = "cpu"):
        self.weight_files = tuple(Path(p) for p in weight_files)
        self.device = torch.device(device)

    @functools.cached_property
    def identity(self) -> str:
        """Which encoder this is, for tables: e.g. ``"vggish sha256:1a2b3c4d (dim 128)"``.

        The first 8 hex digits of each weight file's sha256 (extra files, such as VGGish's
        PCA parameters, follow with their own tag).
        """
        parts = [f"{self.name} sha256:{sha256_file(self.weight_files[0])[:8]}"]
        for tag, p in self._extra_identity():
            parts.append(f"{tag} sha256:{sha256_file(p)[:8]}")
        return " ".join(parts) + f" (dim {self.dim})"

    def _extra_identity(self) -> list[tuple[str, Path]]:
        return []

    def embed(self, wavs: Sequence[np.ndarray], sr: int) -> list[np.ndarray]:
        """Embeds clips; each is resampled to :attr:`sample_rate` and windowed (see the module doc).

        Args:
            wavs: mono (N,) waveforms of any lengths, amplitude in [-1, 1].
            sr: their sample rate (Hz).

        Returns:
            One float32 (n_windows, dim) array per clip.

        Raises:
            MetricError: a clip that is not 1-D, is empty or not finite, or an embedding
                that comes out non-finite.
        """
        clips = _check_wavs(wavs, sr, self.name)
        out = []
        with torch.inference_mode():
            for i, x in enumerate(clips):
                emb = self._embed_clip(resample(x, int(sr), self.sample_rate))
                emb = emb.detach().to("cpu", torch.float32).numpy()
                if emb.ndim != 2 or emb.shape[1] != self.dim:
                    raise MetricError(f"{self.name}: clip {i} gave embeddings of shape {emb.shape}, expected (n, {self.dim})")
                if not np.isfinite(emb).all():
                    raise MetricError(
                        f"{self.name}: clip {i} gave non-finite embeddings ({self.identity}); "
                        "the weights may be damaged or the input out of range"
                    )
                out.append(emb)
        return out

    def _embed_clip(self, x: np.ndarray) -> torch.Tensor:
        """(n_windows, dim) embeddings of one clip already at :attr:`sample_rate`."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- VGGish


def vggish_mel_matrix() -> np.ndarray:
    """VGGish's (257, 64) linear-to-mel weights (HTK mel, triangles in the mel domain, DC row zero).

    Returns:
        float64 (VGGISH_NFFT // 2 + 1, VGGISH_MELS) matrix.
    """

    def hz_to_mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    bins_mel = hz_to_mel(np.linspace(0.0, VGGISH_SR / 2.0, VGGISH_NFFT // 2 + 1))
    edges = np.linspace(hz_to_mel(VGGISH_FMIN), hz_to_mel(VGGISH_FMAX), VGGISH_MELS + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    rise = (bins_mel[:, None] - lo) / (mid - lo)
    fall = (hi - bins_mel[:, None]) / (hi - mid)
    w = np.maximum(0.0, np.minimum(rise, fall))
    w[0, :] = 0.0
    return w


def vggish_examples(wav16: np.ndarray) -> np.ndarray:
    """VGGish's input: non-overlapping 0.96 s log-mel examples of a 16 kHz waveform.

    Args:
        wav16: (N,) waveform at 16 kHz. A clip shorter than one example (15600 samples)
            is zero-padded to one; a trailing part shorter than an example is dropped.

    Returns:
        float32 (n_examples, 96, 64) array of ``log(mel magnitude + 0.01)``.
    """
    x = np.asarray(wav16, dtype=np.float64)
    if x.size < VGGISH_MIN_SAMPLES:
        x = np.pad(x, (0, VGGISH_MIN_SAMPLES - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, VGGISH_WIN)[::VGGISH_HOP]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(VGGISH_WIN) / VGGISH_WIN)  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * window, n=VGGISH_NFFT))  # (T, 257) magnitude
    logmel = np.log(spec @ _vggish_mel() + VGGISH_LOG_OFFSET)  # (T, 64)
    n_ex = 1 + (logmel.shape[0] - VGGISH_EXAMPLE_FRAMES) // VGGISH_EXAMPLE_FRAMES
    return logmel[: n_ex * VGGISH_EXAMPLE_FRAMES].reshape(n_ex, VGGISH_EXAMPLE_FRAMES, VGGISH_MELS).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _vggish_mel() -> np.ndarray:
    return vggish_mel_matrix()


class VGGishNet(nn.Module):
    """The VGGish network with torchvggish's module names; widths are arguments (tests use tiny ones).

    Args:
        conv: output channels of the six 3x3 conv layers (VGGish: 64, 128, 256, 256, 512, 512).
        fc: widths of the three linear layers (VGGish: 4096, 4096, 128).
    """

    def __init__(self, conv: Sequence[int] = (64, 128, 256, 256, 512, 512), fc: Sequence[int] = (4096, 4096, 128)):
        super().__init__()
        if len(conv) != 6 or len(fc) != 3:
            raise ValueError(f"VGGish has 6 conv and 3 linear layers, got {len(conv)} and {len(fc)}")
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(conv):
            layers += [nn.Conv2d(c_in, int(c), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            if i in _VGGISH_POOL_AFTER:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            c_in = int(c)
        self.features = nn.Sequential(*layers)
        # 96 x 64 input halved four times: 6 (time) x 4 (mel) positions.
        flat = c_in * (VGGISH_EXAMPLE_FRAMES // 16) * (VGGISH_MELS // 16)
        self.embeddings = nn.Sequential(
            nn.Linear(flat, int(fc[0])), nn.ReLU(inplace=True),
            nn.Linear(int(fc[0]), int(fc[1])), nn.ReLU(inplace=True),
            nn.Linear(int(fc[1]), int(fc[2])), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeds examples.

        Args:
            x: (B, 1, 96, 64) log-mel examples (time, mel).

        Returns:
            (B, fc[-1]) embeddings.
        """
        x = self.features(x)  # (B, C, 6, 4)
        # Flatten in (time, mel, channel) order, the order of the TensorFlow original.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)

    @classmethod
    def widths_from_state(cls, state: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(conv widths, fc widths) read from a torchvggish state dict's shapes."""
        conv = tuple(int(state[f"features.{i}.weight"].shape[0]) for i in VGGISH_CONV_INDICES)
        fc = tuple(int(state[f"embeddings.{i}.weight"].shape[0]) for i in VGGISH_FC_INDICES)
        return conv, fc


def vggish_postprocess(emb: torch.Tensor, pca_matrix: torch.Tensor, pca_means: torch.Tensor) -> torch.Tensor:
    """VGGish's PCA (+ whitening) and 8-bit quantisation, as in the AudioSet release.

    Args:
        emb: (B, D) raw embeddings.
        pca_matrix: (D, D) ``pca_eigen_vectors`` (rows: output dimensions).
        pca_means: (D,) or (D, 1) ``pca_means``.

    Returns:
        (B, D) values in {0, 1, ..., 255} as floats.
    """
    centred = emb - pca_means.reshape(1, -1)
    pca = centred @ pca_matrix.T
    clipped = pca.clamp(VGGISH_QUANT_MIN, VGGISH_QUANT_MAX)
    return torch.round((clipped - VGGISH_QUANT_MIN) * (255.0 / (VGGISH_QUANT_MAX - VGGISH_QUANT_MIN)))


class VGGishEmbedder(AudioEmbedder):
    """VGGish (16 kHz, one embedding per 0.96 s example); see the module docstring."""

    name = "vggish"
    sample_rate = VGGISH_SR

    def __init__(self, net: VGGishNet, weight_file: Path, pca: tuple[torch.Tensor, torch.Tensor] | None = None,
                 pca_file: Path | None = None, device: str = "cpu"):
        super().__init__([weight_file], device)
        self.net = net.eval().to(self.device)
        self.dim = int(net.embeddings[-2].out_features)
        self.pca = None if pca is None else (pca[0].to(self.device, torch.float32), pca[1].to(self.device, torch.float32))
        self.pca_file = pca_file

    def _extra_identity(self) -> list[tuple[str, Path]]:
        return [("+pca", self.pca_file)] if self.pca_file is not None else []

    def _embed_clip(self, x: np.ndarray) -> torch.Tensor:
        ex = torch.from_numpy(vggish_examples(x)).to(self.device)[:, None]  # (n, 1, 96, 64)
        emb = self.net(ex)
        if self.pca is not None:
            emb = vggish_postprocess(emb, *self.pca)
        return emb


def load_vggish(path: str | os.PathLike, pca: str | os.PathLike | None = None, device: str = "cpu") -> VGGishEmbedder:
    """VGGish from a torchvggish-format file (``.pth`` or ``.safetensors``), widths from the shapes.

    Args:
        path: state dict with ``features.{0,3,6,8,11,13}.{weight,bias}`` and
            ``embeddings.{0,2,4}.{weight,bias}`` (torchvggish's ``vggish-10086976.pth``).
        pca: optional PCA parameters with ``pca_eigen_vectors`` (D, D) and ``pca_means``
            (D,) or (D, 1) (torchvggish's ``vggish_pca_params-970ea276.pth`` or the
            TensorFlow release's ``vggish_pca_params.npz``); when given, embeddings are
            PCA-ed and quantised.
        device: torch device.

    Returns:
        The embedder.

    Raises:
        BackboneError: a missing file, an unsafe or unreadable one, or one whose keys or
            shapes are not VGGish's (the message lists the expected keys).
    """
    path = Path(path).expanduser()
    state = _strip_module(read_state_dict(path, "VGGish weights"))
    keys = [f"features.{i}.{p}" for i in VGGISH_CONV_INDICES for p in ("weight", "bias")]
    keys += [f"embeddings.{i}.{p}" for i in VGGISH_FC_INDICES for p in ("weight", "bias")]
    _require(state, keys, path, "torchvggish VGGish weights", "Expected torchvggish's vggish-10086976.pth layout.")
    conv, fc = VGGishNet.widths_from_state(state)
    net = VGGishNet(conv, fc)
    _load_strict(net, {k: state[k] for k in keys}, path, "VGGish")
    pca_tensors = None
    pca_path = None
    if pca is not None:
        pca_path = Path(pca).expanduser()
        pst = read_state_dict(pca_path, "VGGish PCA parameters")
        if "pproc._pca_matrix" in pst:  # torchvggish's VGGish.state_dict() with postprocessing
            pst = {"pca_eigen_vectors": pst["pproc._pca_matrix"], "pca_means": pst["pproc._pca_means"]}
        _require(pst, ["pca_eigen_vectors", "pca_means"], pca_path, "VGGish PCA parameters",
                 "Expected torchvggish's vggish_pca_params-970ea276.pth (or the TF release's .npz).")
        mat, means = pst["pca_eigen_vectors"].to(torch.float32), pst["pca_means"].to(torch.float32).reshape(-1)
        if tuple(mat.shape) != (fc[-1], fc[-1]) or means.numel() != fc[-1]:
            raise BackboneError(
                f"{pca_path}: PCA shapes {tuple(mat.shape)} / {tuple(pst['pca_means'].shape)} do not fit "
                f"the {fc[-1]}-d VGGish of {path}; expected ({fc[-1]}, {fc[-1]}) and ({fc[-1]},)"
            )
        pca_tensors = (mat, means)
    log.info("VGGish loaded from %s (conv %s, fc %s%s)", path, conv, fc, ", PCA" if pca_path else "")
    return VGGishEmbedder(net, path, pca_tensors, pca_path, device)


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """Strict load with a BackboneError naming missing / unexpected / wrong-shape keys."""
    load_state_strict(module, state, BackboneError, f"{path}: {what} weights (architecture read from their shapes)")


# ----------------------------------------------------------------------------- PANNs CNN14


class _ConvBlock(nn.Module):
    """Two (3x3 conv without bias, batch norm, ReLU) layers; PANNs' ``ConvBlock`` names."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, pool: bool) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=2) if pool else x


def panns_mel_matrix() -> np.ndarray:
    """CNN14's (513, 64) power-to-mel weights: ``librosa.filters.mel`` (slaney) 50-14000 Hz at 32 kHz.

    Returns:
        float32 (PANNS_NFFT // 2 + 1, PANNS_MELS) matrix (torchlibrosa's ``melW`` layout).
    """
    return librosa.filters.mel(sr=PANNS_SR, n_fft=PANNS_NFFT, n_mels=PANNS_MELS, fmin=PANNS_FMIN, fmax=PANNS_FMAX).T


class Cnn14Net(nn.Module):
    """PANNs CNN14 with the reference's module names; widths are arguments (tests use tiny ones).

    The torchlibrosa front end is recomputed with ``torch.stft`` (its ``melW`` and window are
    non-persistent buffers, so they never enter ``state_dict()``).

    Args:
        widths: output channels of the six conv blocks (CNN14: 64, 128, 256, 512, 1024, 2048).
        emb_dim: ``fc1`` width, the embedding size (2048).
        classes: ``fc_audioset`` outputs (527 AudioSet classes).
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512, 1024, 2048), emb_dim: int = 2048, classes: int = 527):
        super().__init__()
        if len(widths) != PANNS_BLOCKS:
            raise ValueError(f"CNN14 has {PANNS_BLOCKS} conv blocks, got {len(widths)} widths")
        self.bn0 = nn.BatchNorm2d(PANNS_MELS)
        c_in = 1
        for i, c in enumerate(widths, start=1):
            setattr(self, f"conv_block{i}", _ConvBlock(c_in, int(c)))
            c_in = int(c)
        self.fc1 = nn.Linear(c_in, int(emb_dim))
        self.fc_audioset = nn.Linear(int(emb_dim), int(classes))
        self.register_buffer("mel_w", torch.from_numpy(panns_mel_matrix()).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(PANNS_NFFT, periodic=True), persistent=False)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, N) 32 kHz waveforms -> (B, 1, T, 64) log-mel power in dB, T = N // 320 + 1."""
        spec = torch.stft(wav, n_fft=PANNS_NFFT, hop_length=PANNS_HOP, win_length=PANNS_NFFT, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True)  # (B, 513, T)
        power = spec.real**2 + spec.imag**2
        mel = power.transpose(1, 2) @ self.mel_w  # (B, T, 64)
        return (10.0 * torch.log10(mel.clamp(min=PANNS_AMIN)))[:, None]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """The "embedding" output of CNN14 in eval mode.

        Args:
            wav: (B, N) waveforms at 32 kHz (N >= 31 * 320 so that 32 frames remain).

        Returns:
            (B, emb_dim) embeddings, ``relu(fc1(max_t + mean_t of the freq-averaged map))``.
        """
        x = self.log_mel(wav)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # batch norm over the 64 mel bands
        for i in range(1, PANNS_BLOCKS + 1):
            x = getattr(self, f"conv_block{i}")(x, pool=i < PANNS_BLOCKS)
        x = x.mean(dim=3)  # over frequency: (B, C, T')
        x = x.max(dim=2).values + x.mean(dim=2)
        return F.relu(self.fc1(x))


class PannsEmbedder(AudioEmbedder):
    """PANNs CNN14 (32 kHz, one 2048-d embedding per window); see the module docstring."""

    name = "panns"
    sample_rate = PANNS_SR

    def __init__(self, net: Cnn14Net, weight_file: Path, window_s: float = PANNS_WINDOW_S, device: str = "cpu"):
        super().__init__([weight_file], device)
        self.net = net.eval().to(self.device)
        self.dim = int(net.fc1.out_features)
        self.window_s = float(window_s)

    def _embed_clip(self, x: np.ndarray) -> torch.Tensor:
        win = int(round(self.window_s * PANNS_SR))
        min_n = (PANNS_MIN_FRAMES - 1) * PANNS_HOP
        if x.size <= win:
            wins = np.pad(x, (0, max(0, min_n - x.size)))[None]
        else:
            wins = _windows(x, win)
        return self.net(torch.from_numpy(wins.astype(np.float32)).to(self.device))


def load_panns(path: str | os.PathLike, window_s: float = PANNS_WINDOW_S, device: str = "cpu") -> PannsEmbedder:
    """CNN14 from a PANNs checkpoint (``torch.save({"model": state_dict})`` or ``.safetensors``).

    Widths are read from the shapes (``conv_block{i}.conv1.weight``, ``fc1.weight``,
    ``fc_audioset.weight``). The torchlibrosa front-end tensors are checked (shapes; the
    mel filterbank's values) and then ignored: the front end is recomputed.

    Args:
        path: local checkpoint (e.g. ``Cnn14_mAP=0.431.pth``).
        window_s: window length (seconds) a long clip is cut into.
        device: torch device.

    Returns:
        The embedder.

    Raises:
        BackboneError: a missing or unsafe file, missing keys, or a front end that is
            not CNN14's 32 kHz / 1024-point / 64-mel 50-14000 Hz one.
    """
    if not window_s > 0:
        raise ConfigError(f"panns window must be > 0 seconds, got {window_s}")
    path = Path(path).expanduser()
    state = _strip_module(read_state_dict(path, "PANNs CNN14 weights"))
    keys = [f"conv_block{i}.{m}.weight" for i in range(1, PANNS_BLOCKS + 1) for m in ("conv1", "conv2", "bn1", "bn2")]
    keys += ["bn0.weight", "bn0.running_mean", "fc1.weight", "fc1.bias", "fc_audioset.weight"]
    _require(state, keys, path, "a PANNs CNN14 checkpoint",
             "Expected torch.save({'model': Cnn14.state_dict()}) as in qiuqiangkong/audioset_tagging_cnn (Cnn14_mAP=0.431.pth).")
    if int(state["bn0.weight"].numel()) != PANNS_MELS:
        raise BackboneError(f"{path}: bn0 has {state['bn0.weight'].numel()} mel bands; CNN14 has {PANNS_MELS}")
    front = {
        "spectrogram_extractor.stft.conv_real.weight": (PANNS_NFFT // 2 + 1, 1, PANNS_NFFT),
        "spectrogram_extractor.stft.conv_imag.weight": (PANNS_NFFT // 2 + 1, 1, PANNS_NFFT),
        "logmel_extractor.melW": (PANNS_NFFT // 2 + 1, PANNS_MELS),
    }
    for key, shape in front.items():
        if key in state and tuple(state[key].shape) != shape:
            raise BackboneError(f"{path}: {key} has shape {tuple(state[key].shape)}, CNN14's front end has {shape}")
    if "logmel_extractor.melW" in state:
        diff = float((state["logmel_extractor.melW"].float() - torch.from_numpy(panns_mel_matrix())).abs().max())
        if diff > 1e-5:
            raise BackboneError(
                f"{path}: its mel filterbank differs from CNN14's (32 kHz, 1024-point FFT, 64 bands "
                f"{PANNS_FMIN:g}-{PANNS_FMAX:g} Hz) by up to {diff:.3g}; this checkpoint was trained with "
                "another front end, which this loader does not support"
            )
    widths = tuple(int(state[f"conv_block{i}.conv1.weight"].shape[0]) for i in range(1, PANNS_BLOCKS + 1))
    net = Cnn14Net(widths, int(state["fc1.weight"].shape[0]), int(state["fc_audioset.weight"].shape[0]))
    model_state = {k: v for k, v in state.items() if k not in front}
    _load_strict(net, model_state, path, "CNN14")
    log.info("PANNs CNN14 loaded from %s (widths %s, embedding %d)", path, widths, net.fc1.out_features)
    return PannsEmbedder(net, path, window_s, device)


# ----------------------------------------------------------------------------- LAION-CLAP


def _projection_from_state(state: Mapping[str, torch.Tensor], path: Path, what: str) -> nn.Sequential:
    """LAION-CLAP's Sequential(Linear, ReLU, Linear) projection, sized by and loaded from ``state``."""
    _require(state, ["0.weight", "0.bias", "2.weight", "2.bias"], path, f"a LAION-CLAP checkpoint ({what})",
             f"Expected '{what}.0.*' and '{what}.2.*' (module. prefixes allowed) as laion_clap saves them.")
    w0, w2 = state["0.weight"], state["2.weight"]
    proj = nn.Sequential(nn.Linear(w0.shape[1], w0.shape[0]), nn.ReLU(), nn.Linear(w2.shape[1], w2.shape[0]))
    _load_strict(proj, state, path, what)
    return proj.eval()


def repeat_pad(x: np.ndarray, length: int) -> np.ndarray:
    """LAION-CLAP's "repeatpad": repeat a short clip a whole number of times, then zero-pad.

    Args:
        x: (N,) waveform with N <= ``length``.
        length: wanted samples.

    Returns:
        (length,) waveform.
    """
    reps = max(1, length // x.size)
    y = np.tile(x, reps)
    return np.pad(y, (0, length - y.size))


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b``.

    Args:
        a: (n, d) array.
        b: (n, d) array.

    Returns:
        (n,) similarities in [-1, 1].
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class ClapEmbedder(AudioEmbedder):
    """LAION-CLAP: audio (HTSAT + ``audio_projection``) and, when loaded, text embeddings.

    Args:
        htsat: loaded HTSAT audio branch.
        audio_projection: loaded projection.
        weight_file: the checkpoint.
        text_branch: loaded RoBERTa, or None for an audio-only embedder.
        text_projection: loaded text projection (with ``text_branch``).
        tokenizer: the RoBERTa tokenizer (with ``text_branch``).
        device: torch device.
    """

    name = "clap"
    sample_rate = CLAP_SR

    def __init__(self, htsat: nn.Module, audio_projection: nn.Module, weight_file: Path, text_branch=None,
                 text_projection: nn.Module | None = None, tokenizer=None, device: str = "cpu"):
        super().__init__([weight_file], device)
        self.htsat = htsat.eval().to(self.device)
        self.audio_projection = audio_projection.eval().to(self.device)
        self.dim = int(audio_projection[-1].out_features)
        self.text_branch = None if text_branch is None else text_branch.eval().to(self.device)
        self.text_projection = None if text_projection is None else text_projection.eval().to(self.device)
        self.tokenizer = tokenizer

    def _embed_clip(self, x: np.ndarray) -> torch.Tensor:
        # int16 round trip (truncating, as laion_clap's float32_to_int16 / int16_to_float32 in
        # get_audio_embedding_from_data do): amplitude steps of 1 / 32767.
        x = np.trunc(np.clip(x, -1.0, 1.0) * 32767.0) / 32767.0
        win = CLAP_WINDOW_SAMPLES
        wins = repeat_pad(x, win)[None] if x.size <= win else _windows(x, win)
        wins_t = torch.from_numpy(wins.astype(np.float32)).to(self.device)
        outs = [clap_adapter.htsat_clip_embeddings(self.htsat, wins_t[i : i + CLAP_BATCH])
                for i in range(0, wins_t.shape[0], CLAP_BATCH)]
        return F.normalize(self.audio_projection(torch.cat(outs)), dim=-1)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-normalised text embeddings (RoBERTa ``pooler_output`` + ``text_projection``).

        Texts are tokenized as laion_clap does: padded / truncated to 77 tokens.

        Args:
            texts: captions.

        Returns:
            float32 (len(texts), dim) array.

        Raises:
            ConfigError: the embedder was loaded without ``text=`` (audio only).
            MetricError: an empty list, or non-finite embeddings.
        """
        if self.text_branch is None:
            raise ConfigError("this CLAP embedder was loaded audio-only; give text=DIR (and tokenizer=DIR) in its spec")
        texts = [str(t) for t in texts]
        if not texts:
            raise MetricError("clap: no texts to embed")
        max_len = min(CLAP_MAX_TOKENS, int(self.text_branch.config.max_position_embeddings) - 2)
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        with torch.inference_mode():
            out = self.text_branch(input_ids=tok["input_ids"].to(self.device),
                                   attention_mask=tok["attention_mask"].to(self.device))
            emb = F.normalize(self.text_projection(out["pooler_output"]), dim=-1).to("cpu", torch.float32).numpy()
        if not np.isfinite(emb).all():
            raise MetricError(f"clap: non-finite text embeddings ({self.identity})")
        return emb

    def clip_audio_embeddings(self, wavs: Sequence[np.ndarray], sr: int) -> np.ndarray:
        """One unit vector per clip: the normalised mean of its window embeddings.

        Args:
            wavs: mono waveforms.
            sr: their rate (Hz).

        Returns:
            float32 (len(wavs), dim) array.
        """
        per = [e.mean(axis=0) for e in self.embed(wavs, sr)]
        a = np.stack(per).astype(np.float64)
        return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

    def clap_similarities(self, texts: Sequence[str], wavs: Sequence[np.ndarray], sr: int) -> np.ndarray:
        """Cosine similarity of each caption with its clip (see :meth:`clap_score`).

        Args:
            texts: captions, one per clip.
            wavs: mono waveforms.
            sr: their rate (Hz).

        Returns:
            (n,) float64 similarities in [-1, 1].
        """
        if len(texts) != len(wavs):
            raise MetricError(f"clap_score pairs texts with clips: got {len(texts)} texts and {len(wavs)} clips")
        return paired_cosine(self.embed_text(texts), self.clip_audio_embeddings(wavs, sr))

    def clap_score(self, texts: Sequence[str], wavs: Sequence[np.ndarray], sr: int) -> float:
        """CLAP score: the mean cosine similarity of paired text and audio CLAP embeddings.

        ``mean_i cos(t_i, a_i)`` where ``t_i`` is caption i's text embedding and ``a_i`` clip
        i's audio embedding (the normalised mean over its 10 s windows). This is the
        text-audio relevance score of the text-to-audio literature (e.g. the CLAP score of
        Make-An-Audio, Huang et al. 2023, computed with LAION-CLAP), which some papers
        report multiplied by 100 (and some clip at 0); we report the plain cosine mean, in
        [-1, 1], without clipping.

        Args:
            texts: captions, one per clip.
            wavs: mono waveforms.
            sr: their rate (Hz).

        Returns:
            The score.
        """
        return float(self.clap_similarities(texts, wavs, sr).mean())


def load_clap(path: str | os.PathLike, text: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None,
              device: str = "cpu") -> ClapEmbedder:
    """LAION-CLAP from a local checkpoint in laion_clap's format (HTSAT audio branch).

    Args:
        path: ``torch.save({"state_dict": {...}})`` (``.pt`` / ``.ckpt``) or ``.safetensors``
            with ``[module.]audio_branch.*`` and ``[module.]audio_projection.{0,2}.*`` and,
            for text, ``[module.]text_branch.*`` and ``[module.]text_projection.{0,2}.*``.
            HTSAT's sizes are read from the shapes.
        text: local RoBERTa directory whose ``config.json`` defines the text branch
            (e.g. a roberta-base snapshot; its weights are not used: the checkpoint's are).
            None: an audio-only embedder.
        tokenizer: local tokenizer directory (default: ``text``).
        device: torch device.

    Returns:
        The embedder.

    Raises:
        BackboneError: a missing or unsafe file, or weights that are not LAION-CLAP's.
    """
    path = Path(path).expanduser()
    state = read_state_dict(path, "a LAION-CLAP checkpoint")
    audio = clap_adapter.select_prefix(state, "audio_branch.")
    hint = "Expected laion_clap's checkpoint layout ({'state_dict': {'module.audio_branch....': ...}}), an HTSAT model."
    _require(audio, ["patch_embed.proj.weight", "head.weight", "layers.0.blocks.0.attn.relative_position_bias_table"],
             path, "a LAION-CLAP HTSAT checkpoint (audio_branch.*)", hint)
    try:
        htsat = clap_adapter.create_htsat_from_state(audio)
    except (KeyError, ValueError) as exc:
        raise BackboneError(f"{path}: {exc}") from exc
    audio_proj = _projection_from_state(clap_adapter.select_prefix(state, "audio_projection."), path, "audio_projection")
    text_branch = text_proj = tok = None
    if text is not None:
        text_dir = Path(text).expanduser()
        tok_dir = Path(tokenizer).expanduser() if tokenizer is not None else text_dir
        for d, what in ((text_dir, "text"), (tok_dir, "tokenizer")):
            if not d.is_dir():
                raise BackboneError(f"clap {what} directory not found: {d} (a local save_pretrained directory)")
        if not (text_dir / "config.json").is_file():
            raise BackboneError(f"{text_dir}: no config.json; give the RoBERTa directory the checkpoint was trained with")
        tstate = clap_adapter.select_prefix(state, "text_branch.")
        if not tstate:
            raise BackboneError(f"{path}: no text_branch.* weights; this checkpoint cannot embed text (drop text=)")
        try:
            text_branch = clap_adapter.create_roberta_text_branch(text_dir, tstate)
        except ValueError as exc:
            raise BackboneError(str(exc)) from exc
        text_proj = _projection_from_state(clap_adapter.select_prefix(state, "text_projection."), path, "text_projection")
        try:
            tok = clap_adapter.load_text_tokenizer(tok_dir)
        except (OSError, ValueError) as exc:
            raise BackboneError(f"{tok_dir}: cannot load a tokenizer from it ({exc})") from exc
    log.info("LAION-CLAP loaded from %s (HTSAT %s%s)", path,
             clap_adapter.htsat_kwargs_from_state(audio)["embed_dim"], ", text" if text_branch is not None else "")
    return ClapEmbedder(htsat, audio_proj, path, text_branch, text_proj, tok, device)


# ----------------------------------------------------------------------------- specs


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Splits ``kind:path[,key=value]...`` into (kind, path, options).

    Args:
        spec: e.g. ``"vggish:/w/vggish.pth,pca=/w/pca.pth"``.

    Returns:
        (kind, path, options).

    Raises:
        ConfigError: an unknown kind, no path, or an option without ``=``.
    """
    kind, sep, rest = str(spec).partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise ConfigError(f"audio embedder spec {spec!r}: unknown kind {kind!r}; {_SPEC_HELP}")
    path, *opts = rest.split(",")
    if not path.strip():
        raise ConfigError(f"audio embedder spec {spec!r}: no weight file; {_SPEC_HELP}")
    options = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"audio embedder spec {spec!r}: option {opt!r} is not key=value; {_SPEC_HELP}")
        options[key.strip().lower()] = value.strip()
    return kind, path.strip(), options


_OPTIONS = {"vggish": {"pca", "device"}, "panns": {"window", "device"}, "clap": {"text", "tokenizer", "device"}}


def load_embedder(spec: str) -> AudioEmbedder:
    """Loads a standard audio embedder from local weight files.

    Args:
        spec: ``"vggish:PATH[,pca=PATH]"``, ``"panns:PATH[,window=SECONDS]"`` or
            ``"clap:PATH[,text=DIR,tokenizer=DIR]"``; each may add ``device=cpu|cuda``.

    Returns:
        The embedder (:class:`VGGishEmbedder`, :class:`PannsEmbedder` or :class:`ClapEmbedder`).

    Raises:
        ConfigError: a malformed spec or an unknown option.
        BackboneError: a missing file or one in the wrong format (the message names the
            expected keys and what to do).
    """
    kind, path, opts = parse_spec(spec)
    unknown = sorted(set(opts) - _OPTIONS[kind])
    if unknown:
        raise ConfigError(f"audio embedder spec {spec!r}: unknown option(s) {unknown} for {kind}; allowed {sorted(_OPTIONS[kind])}")
    device = opts.get("device", "cpu")
    if kind == "vggish":
        return load_vggish(path, pca=opts.get("pca"), device=device)
    if kind == "panns":
        try:
            window = float(opts.get("window", PANNS_WINDOW_S))
        except ValueError as exc:
            raise ConfigError(f"audio embedder spec {spec!r}: window must be seconds, got {opts['window']!r}") from exc
        return load_panns(path, window_s=window, device=device)
    return load_clap(path, text=opts.get("text"), tokenizer=opts.get("tokenizer"), device=device)
