"""soundtrack: a Ray-distributed experiment platform for video-soundtrack generation."""

# Ray reads some settings when it is imported, so they are set when soundtrack is: a local
# Ray on loopback only, no token-auth prompts, no usage stats, offline hubs. A user's own
# environment variables win (setdefault).
from soundtrack.env import set_ray_env

__version__ = "0.1.0"

set_ray_env()
