"""soundtrack: a Ray-distributed experiment platform for video-soundtrack generation."""
__version__ = "0.1.0"
