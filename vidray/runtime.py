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
        return
    ray.init(
        num_cpus=cfg.num_cpus or None,
        logging_level=logging.WARNING,
        include_dashboard=False,
    )
    # Our own progress lines say more per line than Ray Data's bars, and keep job logs short.
    ray.data.DataContext.get_current().enable_progress_bars = False
