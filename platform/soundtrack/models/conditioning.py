"""Condition tokens of the generator, all computed from the input video (plus optional text).

One function, used both when the training stage caches its conditions and when the
generator runs at inference, so training and inference condition on identical tokens:

* ``video``: the pretrained video encoder's per-frame features (10 per second);
* ``music`` / ``sfx``: the video's per-frame projections into the music and the
  sound-effect spaces (CCCG's two heads), unit vectors;
* ``text``: the caption / prompt embedding (only when the generator uses text);
* ``shots``: shot-start frame indices, for the shot-based ("dynamic") attention window.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from soundtrack.data.features import shot_boundaries
from soundtrack.models.unet import Conditions


@torch.no_grad()
def video_conditions(
    encoders,
    frames: torch.Tensor | np.ndarray,
    captions: Sequence[str] | None = None,
    use_text: bool = False,
    shots: list[Sequence[float]] | None = None,
) -> Conditions:
    """Condition tokens of a batch of videos from frozen contrastive encoders.

    Args:
        encoders: a :class:`soundtrack.models.encoders.ContrastiveModel` (eval mode).
        frames: uint8 (B, T, H, W, 3) at 10 fps.
        captions: one caption per clip (used only with ``use_text``).
        use_text: add the caption embedding as text tokens.
        shots: per-clip shot-start frame indices (``None``: computed from the frames).

    Returns:
        :class:`Conditions` with ``video`` (B, T, video_dim), ``music`` and ``sfx``
        (B, T, embed_dim), ``text`` (B, 1, embed_dim) or ``None``, and ``shots``.
    """
    x = torch.as_tensor(np.asarray(frames)) if not torch.is_tensor(frames) else frames
    feats = encoders.video_features(x)
    music = encoders.video_to_music(feats)
    sfx = encoders.video_to_sfx(feats)
    text = None
    if use_text and captions is not None and getattr(encoders, "text", None) is not None:
        text = encoders.encode_text(list(captions)).unsqueeze(1)
    if shots is None:
        arr = x.cpu().numpy()
        shots = [[0.0] + [float(s) for s in shot_boundaries(a)] for a in arr]
    return Conditions(video=feats, music=music, sfx=sfx, text=text, shots=shots)
