"""The read path: which shards a read task takes and which clips each epoch draws."""

import pyarrow as pa
import pyarrow.parquet as pq
from windows import clip_views, coded_window

from vidray.config import ClipConfig
from vidray.data.clips import ClipSampler
from vidray.data.reading import EpochReader, ShardReader


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
        return EpochReader(
            ShardReader(sampler), tuple(files), shards_per_task=2, seed=seed, clock=None
        )

    def epoch(reader: EpochReader, number: int) -> list[tuple[int, int, int, int]]:
        """(shard, first frame, top, left) of every clip, in the order read."""
        return [
            (int(key), *view)
            for slot in range(reader.groups)
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
