"""Ingest: videos -> windows of frames and optical flow in Parquet shards, on Ray Data.

    check (`vidray.data.ingest_check`: no Ray, nothing written)
    list sources ─> skip what is done ─> probe (Ray Data, files in batches)
        ─> plan segments ─> pack into tasks, a shard each ─> decode → flow → encode
        → shard (Ray Data) ─> manifest.parquet + dataset.yaml

When every file to ingest is short (at most ``_FOLD_BYTES``), the probe runs in the
decode task instead (`probe_and_ingest_task`): one Ray Data execution, not two,
each of which pays Ray Data's start-up (about a second, a lot beside a few short
clips); a file is then not spread over tasks, which a short one never needs.

The stages are plain functions in `vidray.data.segments`, testable without Ray;
`run_ingest` only wires them. A task packs segments of many videos of one split
into one shard of about ``ingest.shard_mb`` and records them in the journal
(`vidray.data.manifest`) once the shard is in place: whatever stops the run
(Ctrl-C, SIGTERM, a crash), the next one with the same command does only what
no record names. The driver folds the records into the manifest
(`vidray.data.ledger`) and says every few seconds how far it is
(`vidray.data.progress`), however long one task takes.

An output holds one dataset: the input and layout named in its dataset.yaml.
``ingest.mode`` says what a run does to it: ``add`` ingests new and changed
files and keeps every video it holds, also those no longer in the input (they
are reported); ``prune`` deletes those; ``replace`` deletes the whole dataset
first, and is the only mode that accepts another input or layout. One run at a
time writes to an output: the second is refused while the first holds its lock
(`vidray.data.lock`).

As a shard holds many videos, a video leaving the manifest (pruned, re-ingested
after a change or after its damaged shard was deleted) leaves its windows in
shards other videos still name: the run rewrites each such shard without them
(under a new name, before the manifest names it), so a reader never returns a
window no manifest row claims.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vidray import storage
from vidray.config import Config
from vidray.data.ingest_check import (
    Checked,
    check_ingest,
    split_parameters,
    storage_parameters,
)
from vidray.data.ledger import Ledger, is_complete, manifest_row, small_source_note, video_row
from vidray.data.lock import OutputLock
from vidray.data.manifest import (
    JOURNAL_DIR,
    MANIFEST_FILE,
    WINDOWS_DIR,
    clear_journal,
    read_journal,
    read_manifest,
    remove_dataset,
    write_dataset_info,
    write_manifest,
)
from vidray.data.progress import Heartbeat, IngestProgress, progress_line
from vidray.data.segments import (
    SEGMENT_FIELDS,
    drop_videos,
    ingest_task,
    pack_files,
    pack_segments,
    plan_segments,
    probe_and_ingest_task,
    probe_entry,
    scratch_dir,
    shard_prefix,
    source_entry,
    window_bytes,
)
from vidray.data.sources import SourceListing
from vidray.errors import Interrupted, VidrayError

__all__ = ["IngestSummary", "check_ingest", "run_ingest"]

# The driver also rewrites the manifest this often, so a resumed run reads few
# journal records; the journal alone already loses nothing.
_MANIFEST_EVERY_S = 30.0
_PROGRESS_EVERY_S = 5.0
# Probing a file takes a few ms: many per task, or scheduling dominates.
_PROBES_PER_TASK = 32
# A file this small is one segment at most at common bitrates (16 MB is over 2 min of
# 1 Mbit/s video; a segment is 64 windows of 3.2 s): its probe can go into its decode task.
_FOLD_BYTES = 16 * 2**20


@dataclass
class IngestSummary:
    """What a run did, by video, and the lines that tell the user."""

    output: str
    listed: int = 0
    ingested: int = 0  # ok in this run
    skipped: int = 0  # ok from an earlier (or an interrupted) run, untouched
    quarantined: int = 0
    windows: int = 0  # written in this run
    bytes: int = 0
    seconds: float = 0.0
    gone: int = 0  # videos in the dataset whose file is no longer in the input
    pruned: bool = False  # ... and were deleted (ingest.mode=prune)
    small: int = 0  # ingested below the short side: ingest.max_upscale capped them
    resumed: int = 0  # segments an interrupted run finished, reused, not ingested again
    reasons: Counter = field(default_factory=Counter)  # why files were quarantined
    # Changed files that now fail: the windows of their earlier version stay, and why.
    kept_earlier: int = 0
    kept_reasons: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.ingested + self.skipped + self.kept_earlier

    def report(self) -> str:
        rate = self.windows / self.seconds if self.seconds > 0 else 0.0
        resumed = f" (with {self.resumed} segments done before)" if self.resumed else ""
        kept = f", {self.kept_earlier} kept at their earlier version" if self.kept_earlier else ""
        lines = [
            f"ingest: {self.ingested} ingested{resumed}, {self.skipped} already done, "
            f"{self.quarantined} quarantined{kept} of {self.listed} files",
            f"ingest: {self.windows} windows, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s "
            f"({rate:.1f} windows/s) -> {self.output}",
        ]
        if self.gone and self.pruned:
            lines.append(
                f"ingest: {self.gone} videos no longer in the input were deleted from the "
                "dataset (ingest.mode=prune)"
            )
        elif self.gone:
            lines.append(
                f"ingest: {self.gone} videos in the dataset are no longer in the input; kept "
                "(ingest.mode=prune deletes them)"
            )
        if self.small:
            lines.append(
                f"ingest: {self.small} videos are smaller than the short side and were enlarged "
                "only up to ingest.max_upscale (noted in the manifest)"
            )
        for reason, count in self.reasons.most_common(5):
            lines.append(f"ingest: quarantined {count}x: {reason}")
        for reason, count in self.kept_reasons.most_common(5):
            lines.append(f"ingest: changed, now failing, earlier version kept {count}x: {reason}")
        return "\n".join(lines)


def _tasks_for(items: int, per_task: int, cpus: float) -> int:
    """Number of tasks: ``per_task`` items each, but enough to keep every CPU busy."""
    return max(1, min(items, max(math.ceil(items / per_task), math.ceil(2 * cpus))))


def run_ingest(cfg: Config, *, log: Callable[[str], None] = print) -> IngestSummary:
    """Ingest ``cfg.ingest.input`` into ``cfg.ingest.output``; needs a running Ray.

    Raises:
        VidrayError: what `check_ingest` finds, before anything is written, or
            another run holding the output (`vidray.data.lock`).
        Interrupted: the user stopped it (Ctrl-C, or SIGTERM turned into
            KeyboardInterrupt); every video finished is in the manifest, every
            finished segment of the others in the journal, for the next run.
    """
    checked = check_ingest(cfg)
    with OutputLock(checked.output, log=log):
        run = _Run(cfg, checked, log)
        try:
            run.start()
            run.ingest_videos()
            return run.finish()
        except KeyboardInterrupt:
            raise Interrupted(run.stop()) from None


class _Run:
    """One ingest run's state, so that an interrupt can record what it finished."""

    def __init__(self, cfg: Config, checked: Checked, log: Callable[[str], None]) -> None:
        self.cfg, self.ingest, self.checked, self.log = cfg, cfg.ingest, checked, log
        self.output = checked.output
        self.t0 = time.monotonic()
        self.summary = IngestSummary(output=self.output, listed=len(checked.listing.entries))
        self.entries: dict[str, dict[str, Any]] = {}
        self.ledger = Ledger([], {})
        self.classes: tuple[list[str], list[int] | None] = ([], None)
        # Journal records of the videos this run ingests, until each is complete.
        self.records: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.planned: dict[str, dict[str, Any]] = {}  # segment key -> its planned segment
        # shard -> the videos with windows in it: what the manifest said, and what every
        # task wrote; a video not in it any more has its windows dropped (`finish`)
        self.stored: dict[str, set[str]] = defaultdict(set)
        self.present: set[str] = set()  # the shards in the output when the run started
        self.folded: set[str] = set()  # videos probed in their decode tasks
        self.stage = "starting"  # -> "ingesting" once the ledger is read -> "committed"

    # -- before Ray

    def start(self) -> None:
        output, checked = self.output, self.checked
        info = checked.info
        if self.ingest.mode == "replace" and (
            info is not None or storage.is_file(storage.join(output, MANIFEST_FILE))
        ):
            try:
                earlier = f"{sum(row['status'] == 'ok' for row in read_manifest(output))} videos"
            except VidrayError:  # an unreadable manifest is deleted with the rest
                earlier = "its manifest was unreadable"
            remove_dataset(output)
            info = None
            self.log(
                f"ingest: ingest.mode=replace: deleted the dataset in {output} ({earlier}); "
                "starting it afresh"
            )
        storage.makedirs(output)
        shutil.rmtree(scratch_dir(output), ignore_errors=True)  # leftovers of a killed run
        self.classes = _classes(checked.listing, info, self.log)
        index = {name: label for label, name in enumerate(self.classes[0])}
        duplicates = []
        for entry in map(source_entry, checked.listing.entries):
            if entry["label_name"] in index:
                entry["label"] = index[entry["label_name"]]
            if entry["video_id"] in self.entries:  # the listing says why
                duplicates.append(manifest_row(entry, error=entry["error"]))
            else:
                self.entries[entry["video_id"]] = entry
        self.ledger = Ledger(read_manifest(output), self.entries)
        for row in duplicates:
            self._settle(row, duplicate=True)
        self.stage = "ingesting"
        self._write_info(self.ledger.rows())  # the output now holds this input's dataset

    # -- the work

    def ingest_videos(self) -> None:
        import ray

        from vidray.data.read_start import start_at_full_concurrency

        todo = self._settle_known()
        cpus = ray.cluster_resources().get("CPU", 1.0)
        if todo and all(self._foldable(entry) for entry in todo):
            self._run_folded(todo, cpus)
            return
        segments: list[dict[str, Any]] = []
        if todo:
            probes = ray.data.from_items(
                todo, override_num_blocks=_tasks_for(len(todo), _PROBES_PER_TASK, cpus)
            ).map(probe_entry)
            probed = start_at_full_concurrency(probes).take_all()
            for item in probed:
                if item["error"]:
                    self.records.pop(item["video_id"], None)
                    self._settle(manifest_row(item, error=item["error"]))
                else:
                    segments.extend(self._plan(item))
            resumed = sum(map(len, self.records.values()))
            self.summary.resumed = resumed
            self.log(
                f"ingest: probed {len(probed)} files -> {len(segments)} segments to ingest"
                + (f" ({resumed} more finished by an interrupted run)" if resumed else "")
            )
        if segments:
            self._run_segments(segments, cpus)

    def _settle_known(self) -> list[dict[str, Any]]:
        """Settle what needs no decoding: listing errors, files done by an earlier run
        (recorded in the manifest, or all their segments in the journal); return the rest."""
        previous = self.ledger.previous
        self.present = set(storage.list_files(storage.join(self.output, WINDOWS_DIR)))
        for row in previous.values():
            for shard in row["shards"]:
                self.stored[shard].add(row["video_id"])
        journal: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in read_journal(self.output):
            journal[record["video_id"]].append(record)
            if record["n_windows"]:
                self.stored[record["shard"]].add(record["video_id"])
        todo, recovered = [], 0
        for vid, entry in self.entries.items():
            old = previous.get(vid)
            if entry["size"] is None:
                if old is None or old["status"] != "ok":  # else: gone, its row is kept
                    self._settle(manifest_row(entry, error=entry["error"] or "file not found"))
            elif entry["error"]:
                self._settle(manifest_row(entry, error=entry["error"]))
            elif old is not None and self._unchanged(old, entry):
                self._settle(old, earlier=True)
            else:
                prefix = shard_prefix(entry) + "-"
                for record in journal.get(vid, []):
                    if record["key"].startswith(prefix) and self._in_place(record):
                        self.records[vid][record["key"]] = record
                if is_complete(self.records[vid].values()):
                    row = video_row(list(self.records.pop(vid).values()), self.ingest)
                    self._settle(row, earlier=True)
                    recovered += 1
                else:
                    todo.append(entry)
        gone = len(self.ledger.gone())
        self.summary.gone = gone
        self.log(
            f"ingest: {len(self.entries)} files, {len(self.classes[0])} classes; "
            f"{self.summary.skipped} already ingested"
            + (f" ({recovered} by an interrupted run)" if recovered else "")
            + f", {len(todo)} to ingest"
            + (f"; {gone} videos of the dataset are no longer in the input" if gone else "")
        )
        return todo

    def _unchanged(self, old: dict[str, Any], entry: dict[str, Any]) -> bool:
        return (
            old["status"] == "ok"
            and (old["size"], old["mtime"]) == (entry["size"], entry["mtime"])
            and old["path"] == entry["path"]
            and old["label_name"] == entry["label_name"]
            and old["split"] == entry["split"]
            and all(shard in self.present for shard in old["shards"])
        )

    def _in_place(self, record: dict[str, Any]) -> bool:
        """Whether a record's shard was there when this run started."""
        return record["n_windows"] == 0 or record["shard"] in self.present

    def _published(self, record: dict[str, Any]) -> bool:
        """Whether a record's shard is there now (its task may have been stopped between
        recording it and publishing it)."""
        return record["n_windows"] == 0 or storage.is_file(
            storage.join(self.output, WINDOWS_DIR, record["shard"])
        )

    def _plan(self, probed: dict[str, Any]) -> list[dict[str, Any]]:
        """The segments of a video still to ingest: those the journal has no record of."""
        vid = probed["video_id"]
        plan = plan_segments(probed, self.ingest)
        done = self.records.pop(vid, {})
        for segment in plan:
            self.planned[segment["key"]] = segment
            record = done.get(segment["key"])
            if record is not None and all(record[k] == segment[k] for k in SEGMENT_FIELDS):
                self.records[vid][segment["key"]] = record
        return [s for s in plan if s["key"] not in self.records[vid]]

    def _foldable(self, entry: dict[str, Any]) -> bool:
        """A short file none of whose segments an earlier run finished."""
        return entry["size"] <= _FOLD_BYTES and not self.records.get(entry["video_id"])

    def _run_folded(self, todo: list[dict[str, Any]], cpus: float) -> None:
        """Short files: probed, planned and ingested in the same tasks."""
        self.folded = {entry["video_id"] for entry in todo}
        tasks = pack_files(
            todo,
            files_per_task=max(1, math.ceil(len(todo) / (2 * cpus))),
            bytes_per_task=self.ingest.shard_mb * 1e6,
        )
        self.log(f"ingest: {len(todo)} short files, probed in their {len(tasks)} ingest tasks")
        self._run_tasks(
            [{"files": task} for task in tasks],
            probe_and_ingest_task,
            dict.fromkeys(self.folded),
        )

    def _run_segments(self, segments: list[dict[str, Any]], cpus: float) -> None:
        ingest = self.ingest
        total = sum(s["windows"] for s in segments)
        # A shard of ingest.shard_mb a task, but at least two tasks per CPU.
        tasks = pack_segments(
            segments,
            windows_per_task=max(1, math.ceil(total / (2 * cpus))),
            bytes_per_task=ingest.shard_mb * 1e6,
            bytes_of=lambda segment: window_bytes(segment, ingest, self.cfg.flow),
        )
        self._run_tasks(
            [{"segments": task} for task in tasks],
            ingest_task,
            Counter(s["video_id"] for s in segments),
        )

    def _run_tasks(
        self, tasks: list[dict[str, Any]], stage: Callable[..., Any], videos: dict[str, Any]
    ) -> None:
        """Run ``stage`` on each task on Ray Data, each journal record it returns into
        `_add`; ``videos``: video id -> segments it ingests (`IngestProgress`)."""
        import ray

        from vidray.data.read_start import start_at_full_concurrency

        ingest = self.ingest
        progress = ray.remote(num_cpus=0)(IngestProgress).remote(videos)
        work = ray.data.from_items(tasks, override_num_blocks=len(tasks)).flat_map(
            stage,
            fn_kwargs={
                "ingest": ingest,
                "flow": self.cfg.flow,
                "output": self.output,
                "progress": progress,
            },
            num_cpus=ingest.cpus_per_task,
            num_gpus=ingest.gpus_per_task,
        )
        results = start_at_full_concurrency(work)  # every CPU from the first second
        started = time.monotonic()
        last = IngestProgress({}).snapshot()

        def line() -> str:
            nonlocal last
            with contextlib.suppress(ray.exceptions.RayError):  # busy: say what it said last
                last = ray.get(progress.snapshot.remote(), timeout=2.0)
            return progress_line(**last, seconds=time.monotonic() - started)

        last_save = time.monotonic()
        rows = iter(results.iter_rows())
        try:
            with Heartbeat(line, self.log, _PROGRESS_EVERY_S):
                for result in rows:
                    self._add(dict(result))
                    if time.monotonic() - last_save >= _MANIFEST_EVERY_S:
                        write_manifest(self.output, self.ledger.rows())
                        last_save = time.monotonic()
        finally:
            # Stops Ray Data's execution and cancels its tasks: after an interrupt none
            # writes while `stop` reads the journal, nor after the lock is released.
            rows.close()
            ray.kill(progress)

    def _add(self, record: dict[str, Any]) -> None:
        """A segment's journal record: the video's manifest row once all are in."""
        vid = record["video_id"]
        self.summary.windows += record["n_windows"]
        self.summary.bytes += record["bytes"]
        self.records[vid][record["key"]] = record
        if record["n_windows"]:
            self.stored[record["shard"]].add(vid)
        if is_complete(self.records[vid].values()):
            self._settle(video_row(list(self.records.pop(vid).values()), self.ingest))

    def _settle(
        self, row: dict[str, Any], *, earlier: bool = False, duplicate: bool = False
    ) -> None:
        """Put a video's row in the manifest; ``earlier``: ingested by an earlier run;
        ``duplicate``: a second file listed with the video's id."""
        if duplicate:
            self.ledger.duplicates.append(row)
        else:
            self.ledger.settled[row["video_id"]] = row
        if row["status"] != "ok" and not duplicate and self.ledger.ok_before(row["video_id"]):
            self.summary.kept_earlier += 1  # its row and windows stay (`Ledger.rows`)
            self.summary.kept_reasons[row["error"]] += 1
        elif row["status"] != "ok":
            self.summary.quarantined += 1
            self.summary.reasons[row["error"]] += 1
        elif earlier:
            self.summary.skipped += 1
        else:
            self.summary.ingested += 1
            self.summary.small += (
                small_source_note(row["width"], row["height"], self.ingest) is not None
            )

    # -- the end

    def finish(self) -> IngestSummary:
        prune = self.ingest.mode == "prune"
        rows = self._without_dropped_windows(self.ledger.rows(prune=prune))
        self.summary.pruned = prune
        write_manifest(self.output, rows)
        self.stage = "committed"
        clear_journal(self.output)  # every record is in the manifest now
        _remove_orphan_shards(self.output, rows)
        shutil.rmtree(scratch_dir(self.output), ignore_errors=True)
        self._write_info(rows)
        self.summary.seconds = time.monotonic() - self.t0
        return self.summary

    def _without_dropped_windows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows``, where a shard that also holds windows of a video no row names it for
        any more (pruned, changed, re-ingested) is replaced by a copy without them."""
        claims: dict[str, set[str]] = defaultdict(set)
        split_of: dict[str, str] = {}
        for row in rows:
            if row["status"] == "ok":
                for shard in row["shards"]:
                    claims[shard].add(row["video_id"])
                    split_of[shard] = row["split"]
        renamed = {
            shard: drop_videos(self.output, shard, keep=claimed, split=split_of[shard])
            for shard, claimed in claims.items()
            if self.stored.get(shard, claimed) - claimed
            # a kept video (gone from the input) may name a deleted shard: nothing to copy
            and storage.is_file(storage.join(self.output, WINDOWS_DIR, shard))
        }
        if not renamed:
            return rows
        return [dict(row, shards=[renamed.get(s, s) for s in row["shards"]]) for row in rows]

    def stop(self) -> str:
        """Record what an interrupted run finished; the one line that says so, also when
        recording fails (the journal still holds every finished segment)."""
        try:
            return self._record_stop()
        except Exception as exc:  # a full disk, a lost connection: still the one line
            reason = str(exc).splitlines()[0] if str(exc) else ""
            return (
                f"interrupted; the manifest could not be updated ({type(exc).__name__}: "
                f"{reason}), the finished segments are recorded in "
                f"{storage.join(self.output, JOURNAL_DIR)}; run the same command again to "
                "continue"
            )

    def _record_stop(self) -> str:
        if self.stage == "starting":
            return "interrupted before any video was ingested; run the same command again"
        if self.stage == "ingesting":
            # Tasks record segments the driver has not been sent yet.
            for record in read_journal(self.output):
                if self._awaited(record) and self._published(record):
                    self._add(record)
            rows = self.ledger.rows()
            write_manifest(self.output, rows)
            self._write_info(rows)
        unfinished = [records for records in self.records.values() if records]
        kept = (
            f" and {sum(map(len, unfinished))} finished segments of {len(unfinished)} longer videos"
            if unfinished
            else ""
        )
        return (
            f"interrupted: {self.ledger.ok_listed()} of {len(self.entries)} videos ingested and "
            f"recorded in {storage.join(self.output, MANIFEST_FILE)}{kept}; run the same "
            "command again to continue"
        )

    def _awaited(self, record: dict[str, Any]) -> bool:
        """Whether a journal record is of a segment this run ingests and was not told of."""
        vid, key = record["video_id"], record["key"]
        if vid in self.ledger.settled or key in self.records[vid]:
            return False
        planned = self.planned.get(key)
        if planned is not None:
            return all(record[k] == planned[k] for k in SEGMENT_FIELDS)
        entry = self.entries.get(vid)  # a folded video: planned in its task
        return (
            vid in self.folded
            and key.startswith(shard_prefix(entry) + "-")
            and all(record[k] == entry[k] for k in ("path", "label_name", "split"))
        )

    def _write_info(self, rows: list[dict[str, Any]]) -> None:
        classes, class_ids = self.classes
        ok = [row for row in rows if row["status"] == "ok"]
        write_dataset_info(
            self.output,
            {
                "classes": classes,
                **({"class_ids": class_ids} if class_ids is not None else {}),
                "layout": self.ingest.layout,
                "input": self.checked.input,
                "storage": storage_parameters(self.cfg),
                "splits": split_parameters(self.cfg),
                "videos": len(ok),
                "windows": sum(row["n_windows"] for row in ok),
            },
        )


def _classes(
    listing: SourceListing, info: dict[str, Any] | None, log: Callable[[str], None]
) -> tuple[list[str], list[int] | None]:
    """The dataset's classes: the stored ones first, so the labels of stored windows keep
    their meaning, then classes new in the input. AVA's come from its label map."""
    if info is None or listing.class_ids is not None:
        return listing.classes, listing.class_ids
    earlier = list(info.get("classes") or [])
    added = [name for name in listing.classes if name not in earlier]
    if added and earlier:
        log(
            f"ingest: new classes after the dataset's {len(earlier)}: {', '.join(added)} "
            "(the labels of stored windows keep their meaning)"
        )
    return earlier + added, None


def _remove_orphan_shards(output: str, rows: list[dict[str, Any]]) -> None:
    """Delete the shards no manifest row names: written by a run that crashed before
    recording them, superseded by a changed file's new ones, or pruned."""
    keep = {shard for row in rows for shard in row["shards"]}
    windows = storage.join(output, WINDOWS_DIR)
    for name in storage.list_files(windows):
        if name.endswith(".parquet") and "/" not in name and name not in keep:
            storage.remove(storage.join(windows, name))
