"""A small HTTP client of the soundtrack service (the demo, tests and benchmarks use it)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import requests

from soundtrack.serving.limits import VIDEO_FIELD


def request_soundtrack(url: str, video: str | os.PathLike, out: str | os.PathLike, timeout: float = 300,
                       **options: Any) -> dict[str, Any]:
    """Sends one video to a running service and writes the answer.

    Args:
        url: the service root, e.g. ``http://127.0.0.1:8000``.
        video: the video file to upload.
        out: ``.wav`` (the soundtrack) or ``.mp4`` (the video with it); the suffix sets ``output``.
        timeout: seconds to wait for the answer.
        **options: form fields of :class:`SoundtrackOptions` (seed, num_steps, guidance_scale, ...).

    Returns:
        ``{"path", "status", "bytes", "seconds", "headers"}``.

    Raises:
        RuntimeError: the service answered with an error (its JSON message included).
    """
    out = Path(out)
    fields = {k: str(v) for k, v in options.items() if v is not None}
    fields["output"] = "mp4" if out.suffix.lower() == ".mp4" else "wav"
    t = time.perf_counter()
    with open(video, "rb") as f:
        r = requests.post(url.rstrip("/") + "/v1/soundtrack", files={VIDEO_FIELD: (Path(video).name, f)},
                          data=fields, timeout=timeout)
    if r.status_code != 200:
        raise RuntimeError(f"{url}/v1/soundtrack answered {r.status_code}: {r.text[:500]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(r.content)
    return {"path": out, "status": r.status_code, "bytes": len(r.content),
            "seconds": round(time.perf_counter() - t, 3), "headers": dict(r.headers)}
