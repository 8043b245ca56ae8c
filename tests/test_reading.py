"""The read path: which shards a read task takes and which clips each epoch draws."""

import inspect
import time

import pyarrow as pa
import pyarrow.parquet as pq
from windows import clip_views, coded_window

from vidray.config import ClipConfig
from vidray.data.clips import ClipSampler
from vidray.data.reading import EpochReader, ShardReader, task_groups, windows_per_task


def test_an_epoch_reads_the_same_clips_whatever_read_before_it(tmp_path):
    """Seeded training draws the shard order and every shard's clips from (seed, epoch,
    shard) alone: a run resumed at epoch 3 (a new driver, a fresh reader) reads what an
    uninterrupted run reads in its third epoch. Each epoch reads every window once, in
    a new order and with new clips."""
    files = []
    for shard in range(12):
        files.append(str(tmp_path / f"shard_{shard:02d}.parquet"))
        pq.write_table(
            pa.Table.from_pylist([{**coded_window(20, 30), "video_key": shard}]), files[-1]
        )
    sampler = ClipSampler(ClipConfig(T=4, stride=2, crop=16, hflip=False), flow_L=0, train=True)

    def reader(seed: int = 3) -> EpochReader:
        groups = tuple(((s, 0, 1), (s + 1, 0, 1)) for s in range(0, 12, 2))
        return EpochReader(ShardReader(sampler), tuple(files), groups, seed=seed, clock=None)

    def epoch(reader: EpochReader, number: int) -> list[tuple[int, int, int, int]]:
        """(shard, first frame, top, left) of every clip, in the order read."""
        return [
            (int(key), *view)
            for slot in range(len(reader.groups))
            for batch in reader.read(slot, number)
            for key, view in zip(batch["video_key"], clip_views(batch["frames"]), strict=True)
        ]

    continuous = reader()
    run = [epoch(continuous, number) for number in (1, 2, 3)]
    assert epoch(reader(), 3) == run[2]
    for clips in run:
        assert sorted(shard for shard, *_ in clips) == list(range(12))
    orders = [[shard for shard, *_ in clips] for clips in run]
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert sorted(run[0]) != sorted(run[1])  # new clips, not only a new order
    assert epoch(reader(seed=4), 1) != run[0]


def test_read_tasks_are_sized_by_windows_not_by_shard_count():
    """A task holds about ``per_task`` windows: many small shards share one, a shard
    bigger than a task is read in parts of a task each, every shard is read once, in
    order."""
    windows = [2] * 10 + [40] + [2] * 10
    groups = task_groups(windows, per_task=8, min_tasks=2)
    parts = [part for group in groups for part in group]
    assert [shard for shard, _, _ in parts] == [*range(10), *[10] * 5, *range(11, 21)]
    assert [(k, n) for shard, k, n in parts if shard == 10] == [(k, 5) for k in range(5)]
    assert all(sum(windows[s] / n for s, _, n in g) <= 8 for g in groups)
    assert len(groups) == 3 + 5 + 3  # 4 small shards a task, the big one in 5 parts


def test_a_part_of_a_shard_is_its_share_of_the_row_groups(tmp_path):
    """The parts of a shard read each of its windows once, whatever their number."""
    path = tmp_path / "shard.parquet"
    rows = [{**coded_window(20, 30), "video_key": key} for key in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)  # 4 row groups
    sampler = ClipSampler(ClipConfig(T=4, stride=2, crop=16), flow_L=0, train=False)
    for n in (1, 2, 3, 4, 6):
        keys = [
            int(key)
            for k in range(n)
            for batch in ShardReader(sampler).read([str(path)], parts=[(k, n)])
            for key in batch["video_key"]
        ]
        assert keys == list(range(10)), n


def test_a_small_split_still_spreads_over_every_cpu():
    assert len(task_groups([3, 3, 3, 3, 3, 3], per_task=100, min_tasks=4)) >= 4
    assert len(task_groups([1] * 40, per_task=100, min_tasks=8)) == 8
    assert task_groups([], per_task=10, min_tasks=4) == []


def test_a_window_of_a_bigger_clip_makes_a_smaller_task():
    info = {"storage": {"ingest.short_side": 128}}
    small = windows_per_task(info, ClipConfig(T=16, crop=112), flow_L=0, views=1)
    slowfast = windows_per_task(
        {"storage": {"ingest.short_side": 256}}, ClipConfig(T=32, crop=224), flow_L=0, views=1
    )
    assert 20 < small < 200  # ~10 ms a clip: about 0.75 s in a task
    assert slowfast < small / 6
    assert windows_per_task(info, ClipConfig(T=16), flow_L=10, views=3) < small / 3


def test_ray_data_behaviour_the_full_start_policy_relies_on():
    """read_start swaps Ray Data 2.60's resource-budget policy through the policy list
    in the DataContext and reads the resource manager's granted limits: if a Ray
    upgrade renames or changes these, the policy must be looked at again."""
    from ray.data._internal.execution import backpressure_policy as policies
    from ray.data._internal.execution.resource_manager import (
        ReservationOpResourceAllocator,
        ResourceManager,
    )

    assert policies.ResourceBudgetBackpressurePolicy in policies.ENABLED_BACKPRESSURE_POLICIES
    assert policies.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY == "backpressure_policies.enabled"
    assert ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S == 1
    source = inspect.getsource(ResourceManager.__init__)
    assert "self._global_limits = ExecutionResources.zero()" in source
    assert "_op_resource_allocator" in source
    blocked = ReservationOpResourceAllocator._is_task_submission_blocked_on_output_budget
    assert list(inspect.signature(blocked).parameters) == ["op", "budget"]


def read_task_spans(ray, name: str, since: float) -> list[tuple[float, float]]:
    """(submitted, finished) in seconds of the finished Ray tasks named ``name`` that
    were submitted after ``since``, from Ray's own task events."""
    from ray.util.state import list_tasks

    address = ray.get_runtime_context().gcs_address
    spans = []
    for task in list_tasks(
        address=address, detail=True, limit=10000, raise_on_missing_output=False
    ):
        times = {event["state"]: event["created_ms"] / 1e3 for event in task.events or []}
        if task.name == name and "FINISHED" in times and task.creation_time_ms / 1e3 > since:
            spans.append((task.creation_time_ms / 1e3, times["FINISHED"]))
    return sorted(spans)


def test_an_epoch_starts_a_read_task_on_every_cpu_at_once(ray_local, motion_data):
    """Ray Data starts each execution with no CPU budget for 1-2 s and then admits a
    task only while none runs; the read path's own policy (read_start) submits one
    task per CPU at once. Submission, not start, is compared: a busy machine may start
    the second worker late, but Ray Data submitted it while the first still ran."""
    from vidray.data.reading import read_clips

    ds = read_clips(motion_data, split="train", clip=ClipConfig(T=4, crop=32), flow_L=0, train=True)
    for _ in ds.iter_batches():  # workers started, modules imported
        pass
    since = time.time()
    for _ in ds.iter_batches():
        pass
    spans: list[tuple[float, float]] = []
    for _ in range(60):  # task events reach the GCS about once a second
        spans = read_task_spans(ray_local, "MapBatches(ShardReader)", since)
        if len(spans) >= 2:
            break
        time.sleep(0.5)
    assert len(spans) >= 2, f"the epoch read in {len(spans)} task(s)"
    (_, first_finished), (second_submitted, _) = spans[:2]
    assert second_submitted < first_finished
