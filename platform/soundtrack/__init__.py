"""soundtrack: a Ray-distributed experiment platform for video-soundtrack generation."""

# Ray reads some settings when it is imported, so they are set when soundtrack is: a local
# Ray on loopback only, no token-auth prompts, no usage stats, offline hubs, a numba cache
# (the one table: soundtrack.env.ENV_DEFAULTS). A user's own environment variables win.
from soundtrack.env import apply_env_defaults

__version__ = "0.1.0"

apply_env_defaults()
