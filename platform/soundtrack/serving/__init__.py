"""Ray Serve hosting of a soundtrack generator (``soundtrack serve``, ``serve run serve/config.yaml``).

:mod:`soundtrack.serving.app` holds the deployments and the entry points
(:func:`~soundtrack.serving.app.build_app`, :func:`~soundtrack.serving.app.run_local`);
:mod:`soundtrack.serving.upload` the streaming multipart reader. Importing this package
does not import Ray: the names below load on first use.
"""

from __future__ import annotations

__all__ = ["ServeLimits", "SoundtrackOptions", "build_app", "run_local"]


def __getattr__(name: str):
    if name in __all__:
        from soundtrack.serving import app

        return getattr(app, name)
    raise AttributeError(f"module 'soundtrack.serving' has no attribute {name!r}")
