"""Generation speed: the real-time factor."""

from __future__ import annotations


def real_time_factor(audio_seconds: float, compute_seconds: float) -> float:
    """Seconds of audio generated per second of (wall-clock) compute.

    Definition: ``audio_seconds / compute_seconds``; > 1 is faster than real time.
    (Speech papers often quote the inverse, compute per audio second; ours grows
    with speed so that "higher is better" like the other throughput figures.)

    Args:
        audio_seconds: total duration of the generated audio (s).
        compute_seconds: wall-clock time spent generating it (s), > 0.

    Returns:
        The real-time factor (unitless).
    """
    if compute_seconds <= 0:
        raise ValueError(f"compute_seconds must be > 0, got {compute_seconds}")
    if audio_seconds < 0:
        raise ValueError(f"audio_seconds must be >= 0, got {audio_seconds}")
    return float(audio_seconds) / float(compute_seconds)
