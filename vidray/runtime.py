"""Connecting a job to Ray: the running cluster when there is one, else a local Ray;
and what of Ray's own logging reaches the console (``ray.log_level``)."""

from __future__ import annotations

import logging
import os
import warnings

from vidray.config import RayConfig

# Lines Ray's processes print that say nothing a vidray user can act on: a note to
# Ray's developers about Ray Train's own actor (ray-project/ray#53727), and abseil's
# mutex trace that Ray's C++ core prints as a worker process exits.
RAY_NOISE = (
    r"'PreemptionWatcher' .* has constructor arguments|\] RAW: (Lock|Unlock)"
    # Serve's controller ends itself inside its graceful shutdown: nothing failed.
    r"|Task ServeController\.graceful_shutdown failed"
)


def init_ray(cfg: RayConfig) -> None:
    """Join ``ray.address`` / ``$RAY_ADDRESS`` (``ray job submit`` sets it), else start locally.

    A job submitted to a cluster must never start a Ray of its own, so a set
    address is passed through as is; only without one do ``ray.num_cpus`` and the
    worker-side quieting apply (a submitted job's runtime env is the submitter's).
    """
    quiet = cfg.log_level in ("warning", "error")
    if quiet:
        quiet_console()
    import ray

    if quiet:  # after Ray's import, which puts its own warning filter first
        _ignore_ray_deprecations()
    if ray.is_initialized():
        return
    level = getattr(logging, cfg.log_level.upper())
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=level)
        quiet_ray_data()
        return
    setup = "quiet_worker" if quiet else "own_cluster"
    # Ray Data's per-dataset INFO lines (plans, "execution finished") also come from
    # the workers, which inherit this environment from the local Ray we start.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", cfg.log_level.upper())
    ray.init(
        # "local" always starts a new Ray: without it ray.init() would join whatever
        # /tmp/ray/ray_current_cluster names, even a stale cluster from an earlier run.
        address="local",
        num_cpus=cfg.num_cpus or None,
        logging_level=level,
        runtime_env={"worker_process_setup_hook": f"vidray.runtime.{setup}"},
    )
    quiet_ray_data()


def quiet_console() -> None:
    """This process's console at ``ray.log_level=warning``: vidray's lines and real
    warnings. Called before Ray is imported, where Ray reads its log filter."""
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", RAY_NOISE)
    # MLflow's INFO lines (database migrations, "View run at") repeat what vidray says.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # "Token authentication is enabled": true of every Ray we start, and nothing to do.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)


def own_cluster() -> None:
    """Point a worker of a local Ray at its own cluster (``worker_process_setup_hook``).

    Ray's State API, which Ray Train's placement-group cleaner calls from its actor,
    finds "the" cluster on the machine by looking; with another Ray running there (a
    second job, a notebook) it finds two, fails, and its monitor thread dies with a
    traceback on the console. $RAY_ADDRESS settles which is meant.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def quiet_worker() -> None:
    """`own_cluster`, and the console of `quiet_console` in every worker process of a
    local Ray: no Ray Data notice that progress bars are off, no deprecation warnings
    about Ray's own settings. (Ray Train's INFO lines follow ``RunConfig.logging_config``.)"""
    own_cluster()
    quiet_ray_data()
    _ignore_ray_deprecations()


def quiet_ray_data() -> None:
    """Our own progress lines say more per line than Ray Data's bars and plan dumps."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # It would warn, once per process, that the bars we just turned off are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _ignore_ray_deprecations() -> None:
    """Ray's warnings about settings Ray itself uses (Ray Train sets Ray Data's
    deprecated ``exclude_resources``; Ray Data reads its own deprecated context keys)."""
    for setting in (
        "exclude_resources",
        "use_push_based_shuffle",
        "use_polars",
        "use_arrow_tensor_v2",
    ):
        warnings.filterwarnings(
            "ignore", message=rf"`?(ExecutionOptions\.)?{setting}`? is deprecated"
        )
