"""The same shards read many times at once: as training reads them on Ray (two workers
splitting a shuffled dataset, and an evaluation reading it too, epoch after epoch) and
by threads of one process. Every epoch gets every clip, and no process dies.

Once a Ray Data read worker died with "Mutex corrupt ... Fatal Python error: Aborted"
and the training run still exited 0. The message is abseil's: of the libraries a read
worker loads, only Ray's core and parts of Arrow that reading Parquet does not use carry
it, not OpenCV. A read therefore starts no threads of its own (pinned below), and the
Ray test asks Ray whether any worker died, since Ray retries a dead worker's task.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import ray
from ray.util.state import list_workers

from vidray.config import ClipConfig
from vidray.data.clips import ClipSampler
from vidray.data.manifest import window_files
from vidray.data.reading import ShardReader, iter_clip_batches, read_clips

CLIP = ClipConfig(T=4, stride=2, crop=48)
FLOW_L = 2
EPOCHS = 3


def clip_digests(batches) -> list[tuple[int, str]]:
    """(video key, hash of frames and flow) of every clip, sorted: order-free content."""
    return sorted(
        (int(key), hashlib.blake2b(frames.tobytes() + flow.tobytes()).hexdigest())
        for batch in batches
        for key, frames, flow in zip(
            batch["video_key"], batch["frames"], batch["flow"], strict=True
        )
    )


def dead_workers() -> dict[str, str]:
    """Workers of this Ray that died of a system error (a crash, a signal): id -> detail."""
    workers = list_workers(
        address=ray.get_runtime_context().gcs_address,
        filters=[("exit_type", "=", "SYSTEM_ERROR")],
        detail=True,
        limit=10_000,  # the most the state API gives
        raise_on_missing_output=False,
    )
    return {w.worker_id: f"pid {w.pid}: {w.exit_detail}" for w in workers}


@pytest.mark.parametrize("crop", [48, 400], ids=["cropped", "enlarged"])
def test_reading_shards_starts_no_thread(motion_data, crop):
    """Decoding happens on the reader's own thread: no Arrow pool, no OpenCV pool, also
    when windows smaller than the crop (64-pixel frames, a 400 crop) are enlarged.

    In a fresh process, as in a Ray worker: the threads a library starts on import
    are there before the read; a read that handed work to a pool would add some.
    """
    program = (
        "import os, sys\n"
        "from vidray.config import ClipConfig\n"
        "from vidray.data.clips import ClipSampler\n"
        "from vidray.data.reading import ShardReader\n"
        "threads = lambda: len(os.listdir('/proc/self/task'))\n"
        f"clip = ClipConfig(T=4, stride=2, crop={crop})\n"
        f"reader = ShardReader(ClipSampler(clip, {FLOW_L}, True))\n"
        "before = threads()\n"
        "task = {'paths': [sys.argv[1:]], 'parts': [[(0, 1)] * len(sys.argv[1:])]}\n"
        "clips = sum(len(b['label']) for b in reader(task))\n"
        "print(clips, before, threads())\n"
    )
    files = window_files(motion_data)
    done = subprocess.run(
        [sys.executable, "-c", program, *files], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    clips, before, after = map(int, done.stdout.split())
    assert clips > 0
    assert after == before, f"reading {clips} clips started {after - before} threads"


def test_threads_sharing_one_reader_get_the_same_clips(motion_data):
    files = np.array(window_files(motion_data))
    reader = ShardReader(
        ClipSampler(CLIP, FLOW_L, train=False, temporal_views=2, spatial_views=3), batch_rows=4
    )
    task = {"paths": [files], "parts": [[(0, 1)] * len(files)]}  # one read task's row
    expected = clip_digests(reader(task))
    with ThreadPoolExecutor(6) as pool:
        reads = list(pool.map(lambda _: clip_digests(reader(task)), range(18)))
    assert all(read == expected for read in reads)


def test_concurrent_epochs_on_ray_lose_no_clip_and_no_worker(ray_local, motion_data):
    died_before = dead_workers()
    expected = clip_digests(iter_clip_batches(motion_data, split="train", clip=CLIP, flow_L=FLOW_L))
    # A small split still makes several read tasks per CPU (reading.TASKS_PER_CPU), so
    # that many run and finish while the others stream.
    train = read_clips(motion_data, split="train", clip=CLIP, flow_L=FLOW_L, train=True)
    evaluation = read_clips(motion_data, split="train", clip=CLIP, flow_L=FLOW_L, train=False)
    halves = train.streaming_split(2, equal=False)  # what Ray Train gives two workers
    counts: dict[int, list[int]] = {0: [], 1: []}
    seen: list[list[tuple[int, str]]] = []

    def train_worker(rank: int) -> None:
        for _ in range(EPOCHS):
            counts[rank].append(sum(len(b["label"]) for b in halves[rank].iter_batches()))

    def evaluator() -> None:
        for _ in range(EPOCHS):
            seen.append(clip_digests(evaluation.iter_batches(batch_size=None)))

    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(train_worker, 0), pool.submit(train_worker, 1), pool.submit(evaluator)]
        for job in jobs:
            job.result(timeout=300)

    assert [a + b for a, b in zip(counts[0], counts[1], strict=True)] == [len(expected)] * EPOCHS
    assert seen == [expected] * EPOCHS
    died = {k: v for k, v in dead_workers().items() if k not in died_before}
    assert not died, f"Ray workers died while reading (their tasks were retried): {died}"
