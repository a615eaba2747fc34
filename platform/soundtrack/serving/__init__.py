"""Ray Serve hosting of a soundtrack generator (``soundtrack serve``, ``serve run serve/config.yaml``).

:mod:`soundtrack.serving.app` holds the deployments and the entry points
(:func:`~soundtrack.serving.app.build_app`, :func:`~soundtrack.serving.app.run_local`);
:mod:`soundtrack.serving.upload` the streaming multipart reader.
"""
