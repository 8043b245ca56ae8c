"""``vidray predict``: a classification checkpoint on new videos -> top-k and a timeline.

One local video runs in-process (`vidray.predict.classifier.predict_video`). A folder,
a CSV of paths or a URI prefix is a Ray Data batch-inference job that streams: no video
is held whole, and answers are journaled as they complete.

    inputs, less those answered before (the journal: same path, size, mtime)
      -> flat_map(decode_windows)          CPU tasks: decode, flow, encode; window rows
      -> map_batches(WindowModel, concurrency=predict.workers)   the model's replicas
      -> the driver: a video's windows gathered -> its answer -> <output>/_journal.jsonl
    -> <output>/predictions.csv, timeline.csv (or predictions.jsonl): every input a row

A file that does not decode is skipped with the reason; the job goes on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidray import storage
from vidray.config import Config
from vidray.errors import Interrupted, VideoError, VidrayError
from vidray.predict.answers import OK, Answer, Journal, write_answers
from vidray.predict.classifier import (
    Storage,
    TrainedClassifier,
    VideoPrediction,
    Window,
    WindowScorer,
    load_classifier,
    predict_video,
    scored,
    video_windows,
)
from vidray.predict.inputs import Input, list_inputs
from vidray.predict.render import check_output, render_prediction

WINDOWS_PER_BATCH = 16  # window rows per call of a model replica
PROGRESS_EVERY_S = 10.0


@dataclass
class PredictReport:
    output: Path
    written: list[Path]
    answered: int  # videos answered in this run
    kept: int  # answered by an earlier run, skipped now
    skipped: dict[str, str] = field(default_factory=dict)  # video -> reason
    headline: str = ""  # one video's top classes
    rendered: Path | None = None

    def report(self) -> str:
        lines = [self.headline] if self.headline else []
        kept = f", {self.kept} answered before" if self.kept else ""
        lines.append(
            f"predict: {self.answered} video(s) answered{kept}, {len(self.skipped)} skipped "
            f"-> {', '.join(str(p) for p in self.written)}"
        )
        if self.rendered:
            lines.append(f"predict: labels and timeline drawn on {self.rendered}")
        lines += [f"predict: skipped {video}: {reason}" for video, reason in self.skipped.items()]
        return "\n".join(lines)


def run_predict(cfg: Config, log: Callable[[str], None] = print) -> PredictReport:
    """``vidray predict``: answers for every input ``predict.video`` names, written under
    ``predict.output``; ``log`` gets progress lines of a long job."""
    settings = cfg.predict
    _check(cfg)
    classifier = load_classifier(settings.checkpoint)
    output = Path(settings.output or default_output(settings.video))
    inputs = list_inputs(settings.video, output=str(output))
    one_file = len(inputs) == 1 and Path(settings.video).is_file()
    if settings.render and not one_file:
        raise VidrayError("predict.render draws on one video: pass --video FILE to render it")
    journal = Journal(output)
    try:
        if one_file:
            prediction = _answer_here(cfg, classifier, inputs[0], journal)
            todo = inputs
        else:
            prediction = None
            todo = [source for source in inputs if not journal.done(source)]
            if todo:
                _answer_with_ray(cfg, todo, journal, classifier, log)
    except KeyboardInterrupt:
        answered = sum(journal.done(source) for source in inputs)
        raise Interrupted(
            f"interrupted: {answered} of {len(inputs)} videos answered, kept in "
            f"{journal.path}; run the same command again to answer the rest"
        ) from None
    finally:
        journal.close()
    answers = [journal.answers[source.video] for source in inputs]
    asked = {source.video for source in todo}
    written = write_answers(output, answers, top_k=settings.top_k, format=settings.format)
    report = PredictReport(
        output=output,
        written=written,
        answered=sum(a.status == OK and a.video in asked for a in answers),
        kept=len(inputs) - len(todo),
        skipped={a.video: a.error for a in answers if a.status != OK},
    )
    if prediction is not None:
        top = ", ".join(f"{label} {score:.3f}" for label, score in prediction.top(settings.top_k))
        report.headline = f"predict: {inputs[0].video}: {top}"
        if settings.render:
            report.rendered = render_prediction(
                Path(inputs[0].video),
                Path(settings.render),
                prediction,
                short_side=settings.render_short_side,
            )
    return report


def default_output(video: str) -> str:
    """predictions/<the file's or folder's name>."""
    name = Path(video.rstrip("/")).stem or "videos"
    return str(Path("predictions") / name)


def _check(cfg: Config) -> None:
    settings = cfg.predict
    if not settings.checkpoint:
        raise VidrayError("vidray predict needs --checkpoint DIR (a classification checkpoint)")
    if settings.top_k < 1:
        raise VidrayError(f"predict.top_k={settings.top_k}: 1 or more classes")
    if settings.workers < 1:
        raise VidrayError(f"predict.workers={settings.workers}: 1 or more model replicas")
    if settings.render:  # before the model loads: a wrong name costs no prediction
        check_output(
            Path(settings.video), Path(settings.render), short_side=settings.render_short_side
        )


def _answer_here(
    cfg: Config, classifier: TrainedClassifier, source: Input, journal: Journal
) -> VideoPrediction | None:
    """One local video in this process (its GPU if it has one); its prediction, or None
    when it does not decode (then skipped in the journal)."""
    settings = cfg.predict
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer = WindowScorer(
        classifier,
        device=device,
        temporal_views=settings.temporal_views,
        spatial_views=settings.spatial_views,
    )
    try:
        prediction = predict_video(
            Path(source.video), scorer, stride_s=settings.stride_s, video=source.video
        )
    except VideoError as exc:
        journal.add(Answer.skipped(source, str(exc)))
        return None
    journal.add(Answer.of(source, prediction, top_k=settings.top_k))
    return prediction


def decode_windows(row: dict[str, Any], *, storage: Storage) -> Iterator[dict[str, Any]]:
    """Ray Data stage: a video -> its window rows, each with ``video``, ``window``,
    ``start_s``, ``end_s`` and ``windows`` (the video's count, on its last row only; -1
    before). A video that does not decode gives one row: no frames, ``error`` set."""
    video, held, count = row["video"], None, 0
    try:
        with _local(video) as path:
            for count, window in enumerate(video_windows(path, storage), start=1):
                if held is not None:
                    yield _window_row(video, count - 2, held, windows=-1)
                held = window
    # Not a video, or a URI the store will not give (gone, no access): a row, not a
    # failed job. The rows sent before it are dropped by the driver.
    except (VidrayError, OSError) as exc:
        sent = max(count - 1, 0)
        yield {"video": video, "window": -1, "windows": sent, "error": str(exc)}
        return
    if held is None:
        yield {"video": video, "window": -1, "windows": 0, "error": f"{video}: no window decoded"}
        return
    yield _window_row(video, count - 1, held, windows=count)


def _local(video: str) -> Any:
    if not storage.is_uri(video) and not Path(video).is_file():
        raise VideoError(f"{video}: no such file")
    return storage.local_file(video)


def _window_row(video: str, index: int, window: Window, *, windows: int) -> dict[str, Any]:
    return {
        **window.row,
        "video": video,
        "window": index,
        "windows": windows,
        "error": "",
        "start_s": window.start_s,
        "end_s": window.end_s,
    }


class WindowModel:
    """Ray Data stage (an actor class): window rows -> class probabilities, one model
    replica per actor. A video's error row passes through unscored."""

    def __init__(self, checkpoint: str, *, use_gpu: bool, views: tuple[int, int]) -> None:
        torch.set_num_threads(1)  # the replicas and the decode tasks share the cores
        classifier = load_classifier(checkpoint)
        device = torch.device("cuda" if use_gpu else "cpu")
        self.scorer = WindowScorer(
            classifier, device=device, temporal_views=views[0], spatial_views=views[1]
        )

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        errors = np.asarray(batch.column("error").to_pylist(), dtype=object)
        windows = np.flatnonzero(errors == "")
        probs = np.zeros((batch.num_rows, len(self.scorer.classifier.classes)))
        if len(windows):
            probs[windows] = self.scorer(batch.take(windows).drop_columns(["error"]))
        return {
            name: np.asarray(batch.column(name).to_pylist(), dtype=kind)
            for name, kind in (("video", object), ("window", np.int64), ("windows", np.int64))
        } | {
            "error": errors,
            "start_s": _floats(batch, "start_s"),
            "end_s": _floats(batch, "end_s"),
            "probs": probs,
        }


def _floats(batch: Any, name: str) -> np.ndarray:
    if name not in batch.column_names:
        return np.zeros(batch.num_rows)
    return np.asarray(batch.column(name).fill_null(0.0).to_pylist(), dtype=np.float64)


def _answer_with_ray(
    cfg: Config,
    todo: list[Input],
    journal: Journal,
    classifier: TrainedClassifier,
    log: Callable[[str], None],
) -> None:
    """The Ray Data job over ``todo``; each video's answer is journaled as it completes."""
    from ray.data import ActorPoolStrategy, from_items

    from vidray.runtime import init_ray

    settings = cfg.predict
    init_ray(cfg.ray)
    scored_windows = (
        from_items([{"video": source.video} for source in todo], override_num_blocks=len(todo))
        .flat_map(
            decode_windows,
            fn_kwargs={"storage": classifier.storage.with_stride(settings.stride_s)},
            num_cpus=1,
        )
        .map_batches(
            WindowModel,
            # Ray workers run in other directories: the checkpoint's path is made absolute.
            fn_constructor_kwargs={
                "checkpoint": storage.resolve(settings.checkpoint),
                "use_gpu": settings.use_gpu,
                "views": (settings.temporal_views, settings.spatial_views),
            },
            batch_format="pyarrow",
            batch_size=WINDOWS_PER_BATCH,
            compute=ActorPoolStrategy(size=settings.workers),
            num_cpus=0 if settings.use_gpu else 1,
            num_gpus=1 if settings.use_gpu else 0,
        )
    )
    gather = Gatherer(
        {s.video: s for s in todo}, journal, top_k=settings.top_k, classes=classifier.classes
    )
    last = time.monotonic()
    for row in scored_windows.iter_rows():
        gather.add(row)
        if time.monotonic() - last > PROGRESS_EVERY_S:
            log(f"predict: {gather.finished}/{len(todo)} videos answered")
            last = time.monotonic()
    for video in set(gather.sources) - gather.done:  # never complete: say so, keep going
        journal.add(Answer.skipped(gather.sources[video], "some of its windows were lost"))


class Gatherer:
    """A video's scored windows as they arrive, in any order; once all are in (the last
    window row says how many), its answer goes to the journal and its rows are freed."""

    def __init__(
        self, sources: dict[str, Input], journal: Journal, *, top_k: int, classes: tuple
    ) -> None:
        self.sources = sources
        self.journal = journal
        self.top_k = top_k
        self.classes = classes
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.expected: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.done: set[str] = set()

    @property
    def finished(self) -> int:
        return len(self.done)

    def add(self, row: dict[str, Any]) -> None:
        video = row["video"]
        if row["error"]:
            self.errors[video] = row["error"]
            self.expected[video] = int(row["windows"])
        else:
            self.rows[video].append(row)
            if row["windows"] >= 0:
                self.expected[video] = int(row["windows"])
        if video in self.expected and len(self.rows[video]) >= self.expected[video]:
            self._finish(video)

    def _finish(self, video: str) -> None:
        source = self.sources[video]
        rows = sorted(self.rows.pop(video, []), key=lambda r: r["window"])
        if video in self.errors:
            self.journal.add(Answer.skipped(source, self.errors[video]))
        else:
            windows = [Window(r["start_s"], r["end_s"], {}) for r in rows]
            probs = np.stack([np.asarray(r["probs"]) for r in rows])
            prediction = scored(video, windows, probs, self.classes)
            self.journal.add(Answer.of(source, prediction, top_k=self.top_k))
        self.done.add(video)
