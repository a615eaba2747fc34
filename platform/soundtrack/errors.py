"""The one error hierarchy: every error soundtrack raises on purpose is a :class:`SoundtrackError`.

The command line catches :class:`SoundtrackError` (and ``FileNotFoundError``) and prints
its message with exit status 2; the HTTP service maps :class:`UploadError` and the input
errors to 4xx answers. Each subclass also derives from the builtin exception that callers
caught before the hierarchy existed (``ValueError``, ``RuntimeError``), so ``except
ValueError`` keeps working.
"""

from __future__ import annotations


class SoundtrackError(Exception):
    """Base class: a problem soundtrack recognised, with a message naming it and what to do."""


class ConfigError(SoundtrackError, ValueError):
    """A config key or value that is not allowed (the message names it and the choices)."""


class ConfigFileNotFound(ConfigError, FileNotFoundError):
    """A config file that does not exist (also a ``FileNotFoundError``, as it was before)."""


class UpstreamError(SoundtrackError, RuntimeError):
    """An input run that is missing or did not finish."""


class ManifestError(SoundtrackError, ValueError):
    """A manifest that does not follow the contract (names the column and the fix)."""


class MediaError(SoundtrackError):
    """A media file that cannot be used.

    Attributes:
        reason: one of ``empty``, ``missing``, ``not_video``, ``no_video_stream``,
            ``no_audio``, ``truncated``, ``unreadable``, ``too_short``, ``damaged`` (more of
            a clip lost to undecodable packets than ``featurize.max_lost_fraction``).
        message: a human sentence naming the problem and what to do.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class GeneratorError(SoundtrackError, ValueError):
    """A model directory, an input or an option the generator cannot use (the message
    names the problem and what to do)."""


class ModelURIError(SoundtrackError, ValueError):
    """A model URI that does not name a usable model directory (message: what exists)."""


class RegistryError(SoundtrackError, ValueError):
    """A registry entry that is missing or malformed (the message names it)."""


class TooFewClips(SoundtrackError, ValueError):
    """A split too small to evaluate on (the message gives the numbers)."""


class UploadError(SoundtrackError):
    """A request body the service refuses.

    Attributes:
        status: HTTP status code (400 malformed, 413 too large, 415 wrong type, 422 bad field).
        code: short machine-readable error name.
        message: a sentence naming the problem and what to do.
        field: the form field at fault, when there is one.
        limit: the configured limit that was exceeded, when there is one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None, limit=None):
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.field = field
        self.limit = limit

    def to_dict(self) -> dict:
        """The JSON body of the error answer."""
        return {"error": self.code, "message": self.message, "field": self.field, "limit": self.limit}


class TrainingError(SoundtrackError, RuntimeError):
    """A training run that cannot go on (a non-finite loss, an empty data stream); the
    message names the step and the last good checkpoint, which is kept."""


class WorkerFailedError(TrainingError):
    """A distributed training run whose workers kept failing (a worker died or raised)
    after the configured restarts: the message names the failed worker ranks, the last
    error line and the last checkpoint, which is kept (``--resume`` continues from it)."""


class CodecError(SoundtrackError, ValueError):
    """An array column the shard codec has no storage dtype for (the message names it and
    where the table is: :data:`soundtrack.data.shards.ARRAY_DTYPES`)."""


class ObjectiveError(SoundtrackError, ValueError):
    """A tuning objective that is undefined on the scored clips: a metric it names is
    missing (e.g. ``sim`` without an evaluator) or not finite (nan on every clip, a set too
    small for a set metric). The message names the metric and why; the trial errors
    instead of scoring 0."""


class MetricError(SoundtrackError, ValueError):
    """An input a metric cannot be computed on: a wrong shape, non-finite values, an
    unknown label (the message names the input and what is expected)."""


class BackboneError(SoundtrackError, ValueError):
    """A pretrained backbone directory (diffusers AudioLDM / MusicLDM) that cannot be used:
    a missing part, an unsupported pipeline or a UNet of another kind (the message names
    what is missing or different and what to do)."""


class AnalyserUnavailable(SoundtrackError, ImportError):
    """An optional analysis model (``soundtrack.metrics.analysis``) whose package is not
    installed or whose packaged weights are missing (the message names the package and the
    exact install command). Also an ``ImportError``: a caller that falls back to the default
    analyser on a missing optional package catches that."""


class StorageError(SoundtrackError, OSError):
    """A storage root, object or name that cannot be used: a malformed URI, an unsafe name
    (``/``, ``..``, a NUL), an object store a stage does not support yet, a failed read or
    write (the message names the location and what to do). Also an ``OSError``."""


class NotPublishedError(StorageError):
    """A directory read as published that has no completion marker (``_COMPLETE``), or whose
    files do not match the marker's manifest: its writer was killed or is still writing."""


class LeaseHeldError(StorageError):
    """A run directory whose lease (``_LEASE.json``) is held by a live owner: the message
    names the owner's host, pid, start time and last heartbeat."""


class IntegrityError(SoundtrackError, ValueError):
    """A file the platform wrote that fails its check on read: missing, truncated, of another
    sha256 than its manifest records (``weights.sha256.json``), not decodable (a garbled
    shard or checkpoint), or a path in a model card that leaves its directory. The message
    names the file, what was expected and found (hash prefixes, sizes) and what to do
    (re-export, re-train or re-download; delete the run or use ``--force``; resume from the
    previous checkpoint)."""


class WriteError(SoundtrackError, OSError):
    """A write of a shard, a checkpoint or a model directory that failed (the message names
    the file, the cause and the previous good state, which is kept: nothing half-written is
    left under a final name)."""


class DiskFullError(WriteError):
    """A :class:`WriteError` for lack of space: the disk or quota is full (``ENOSPC``,
    ``EDQUOT``) or the file exceeds the process's file-size limit (``EFBIG``)."""


class ClusterError(SoundtrackError, ConnectionError):
    """A Ray cluster a stage cannot start on or join: an address it does not support (Ray
    Client's ``ray://``), a cluster that refuses the driver (token authentication without a
    token) or that cannot be reached. The message names the address and what to do."""
