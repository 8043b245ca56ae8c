"""Where ``vidray predict`` keeps its answers: a journal as it goes, files at the end.

    <output>/_journal.jsonl   one JSON line per video as it is answered (flushed), so a
                              stopped job keeps every answer it finished and a re-run
                              skips them (same path, size and mtime)
    <output>/predictions.csv  one row per input: status ok | skipped, the reason, the
                              top-k classes and scores (label_1, score_1, ...)
    <output>/timeline.csv     one row per window of each video: start, end, its top-k
    <output>/predictions.jsonl   (predict.format=jsonl, instead of both CSVs) one object
                              per input: the answer `VideoPrediction.to_dict` gives, with
                              its status

The final files are written whole from the journal (a temporary file, then a rename).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vidray.predict.classifier import VideoPrediction
from vidray.predict.inputs import Input

JOURNAL_FILE = "_journal.jsonl"
PREDICTIONS_CSV = "predictions.csv"
TIMELINE_CSV = "timeline.csv"
PREDICTIONS_JSONL = "predictions.jsonl"
OK, SKIPPED = "ok", "skipped"


@dataclass(frozen=True)
class Answer:
    """One input's journal record: the answer, or why there is none."""

    video: str
    size: int
    mtime: float
    status: str  # OK or SKIPPED
    error: str = ""  # why it was skipped
    answer: dict[str, Any] | None = None  # `VideoPrediction.to_dict`

    @classmethod
    def of(
        cls, source: Input, prediction: VideoPrediction, *, top_k: int, note: str = ""
    ) -> Answer:
        return cls(source.video, source.size, source.mtime, OK, note, prediction.to_dict(top_k))

    @classmethod
    def skipped(cls, source: Input, reason: str) -> Answer:
        # A reason from the decoder names the file already: say it once.
        reason = reason.removeprefix(f"{source.video}: ")
        return cls(source.video, source.size, source.mtime, SKIPPED, reason)

    def done_for(self, source: Input) -> bool:
        """Whether this answers ``source`` as it is now (a skipped one is tried again)."""
        return self.status == OK and (self.size, self.mtime) == (source.size, source.mtime)


class Journal:
    """The answers so far, read back from ``<output>/_journal.jsonl`` and appended to."""

    def __init__(self, output: Path) -> None:
        output.mkdir(parents=True, exist_ok=True)
        self.path = output / JOURNAL_FILE
        self.answers: dict[str, Answer] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():  # a line cut short by a kill is the only one lost
                    try:
                        answer = Answer(**json.loads(line))
                    except (json.JSONDecodeError, TypeError):
                        continue
                    self.answers[answer.video] = answer
        self._file: TextIO = self.path.open("a")

    def done(self, source: Input) -> bool:
        found = self.answers.get(source.video)
        return found is not None and found.done_for(source)

    def add(self, answer: Answer) -> None:
        self.answers[answer.video] = answer
        self._file.write(json.dumps(answer.__dict__) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_answers(
    output: Path, answers: Iterable[Answer], *, top_k: int, format: str
) -> list[Path]:
    """The final files of ``answers`` (sorted by video), in ``format`` (csv or jsonl)."""
    answers = sorted(answers, key=lambda a: a.video)
    if format == "jsonl":
        lines = [json.dumps(_jsonl_object(a)) for a in answers]
        return [_replace(output / PREDICTIONS_JSONL, "".join(f"{line}\n" for line in lines))]
    ranks = [f"{name}_{r}" for r in range(1, top_k + 1) for name in ("label", "score")]
    videos = [
        {"video": a.video, "status": a.status, "error": a.error, **_ranked(a)} for a in answers
    ]
    windows = [
        {"video": a.video, "window": i, "start_s": w["start_s"], "end_s": w["end_s"], **_flat(w)}
        for a in answers
        if a.answer
        for i, w in enumerate(a.answer["timeline"])
    ]
    return [
        _replace(output / PREDICTIONS_CSV, _csv(["video", "status", "error", *ranks], videos)),
        _replace(
            output / TIMELINE_CSV, _csv(["video", "window", "start_s", "end_s", *ranks], windows)
        ),
    ]


def _jsonl_object(answer: Answer) -> dict[str, Any]:
    found = answer.answer or {"video": answer.video, "top": [], "timeline": []}
    return {**found, "status": answer.status, "error": answer.error}


def _ranked(answer: Answer) -> dict[str, Any]:
    return _flat(answer.answer) if answer.answer else {}


def _flat(scored: dict[str, Any]) -> dict[str, Any]:
    """``top`` as columns: label_1, score_1, label_2, ..."""
    columns: dict[str, Any] = {}
    for rank, entry in enumerate(scored["top"], start=1):
        columns[f"label_{rank}"] = entry["label"]
        columns[f"score_{rank}"] = f"{entry['score']:.6f}"
    return columns


def _csv(header: list[str], rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _replace(path: Path, text: str) -> Path:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path
