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


def user_error(error: BaseException) -> VidrayError | None:
    """The `VidrayError` at the root of ``error``, or None when there is none (a bug).

    Ray re-raises what fails elsewhere wrapped in its own types: a train worker's
    failure in a ``WorkerGroupError`` (``worker_failures``), a task's exception
    in a ``RayTaskError`` (``cause``), a controller's in ``controller_failure``.
    The user's mistake is then several links down, and its message is the line
    to show.
    """
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # Ray's wrappers subclass the wrapped type too (``RayTaskError(VidrayError)``,
        # made in ray.exceptions) with a traceback for a message: look past them.
        if isinstance(current, VidrayError) and not type(current).__module__.startswith("ray."):
            return current
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            pending.extend(failures.values())
        for link in ("cause", "controller_failure", "__cause__", "__context__"):
            linked = getattr(current, link, None)
            if isinstance(linked, BaseException):
                pending.append(linked)
    return None


class Interrupted(Exception):
    """The user stopped a long command (Ctrl-C or SIGTERM) and what was done is kept.

    The message is one line that says what was kept and how to continue (e.g.
    "interrupted at epoch 3; last checkpoint runs/x/epoch_003; resume with
    train.resume_from=runs/x/epoch_003"). The CLI prints it and exits 130, the
    status a shell gives a command ended by SIGINT.
    """
