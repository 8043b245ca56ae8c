"""The one exception type for mistakes a user can make.

A `VidrayError` carries a one-line message that names the thing at fault and,
where there is one, the fix. The CLI and the pipeline entry points print it
without a traceback and exit non-zero; anything else is a bug and keeps its
traceback.
"""


class VidrayError(Exception):
    """A user-facing error: bad input, bad config, missing file or checkpoint."""


class VideoError(VidrayError):
    """A video file that cannot be probed or decoded; ingest quarantines it."""
