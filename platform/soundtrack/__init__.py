"""soundtrack: a Ray-distributed experiment platform for video-soundtrack generation."""

__version__ = "0.1.0"


def _ray_env_defaults() -> None:
    # Ray reads some settings when it is imported, so they are set when soundtrack is:
    # a local Ray on loopback only, no token-auth prompts, no usage stats, offline hubs.
    # A user's own environment variables win (setdefault).
    from soundtrack.distributed.cluster import set_ray_env

    set_ray_env()


_ray_env_defaults()
