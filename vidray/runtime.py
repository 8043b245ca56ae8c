"""Connecting a job to Ray: the running cluster when there is one, else a local Ray."""

from __future__ import annotations

import logging
import os

from vidray.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Join ``ray.address`` / ``$RAY_ADDRESS`` (``ray job submit`` sets it), else start locally.

    A job submitted to a cluster must never start a Ray of its own, so a set
    address is passed through as is; only without one do ``ray.num_cpus``
    and a quiet log level apply.
    """
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        quiet_ray_data()
        return
    # Ray Data's per-dataset INFO lines (plans, "execution finished") also come from
    # the workers, which inherit this environment from the local Ray we start.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    ray.init(
        # "local" always starts a new Ray: without it ray.init() would join whatever
        # /tmp/ray/ray_current_cluster names, even a stale cluster from an earlier run.
        address="local",
        num_cpus=cfg.num_cpus or None,
        logging_level=logging.WARNING,
    )
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Our own progress lines say more per line than Ray Data's bars and plan dumps."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # It would warn, once per process, that the bars we just turned off are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
