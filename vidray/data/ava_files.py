"""The AVA v2.2 files as they ship, read and written without extra dependencies.

File kinds (CSV files have no header; blank lines are skipped; fields are stripped):

- annotations (``ava_{train,val}_v2.2.csv``), 8 columns::

      video_id, middle_frame_timestamp, x1, y1, x2, y2, action_id, person_id

  The timestamp is a whole number of seconds (``0902``); the box is normalised to
  [0, 1] (x right, y down). A person with several actions at a keyframe has one
  row per action; `read_annotations` groups them into one `LabeledBox` (for
  training) and `read_ground_truth` keeps every row an instance (for scoring).
  Files without the person_id column (7 columns) are accepted: person_id is then
  -1. The 2020 form of the files (ActivityNet's evaluator since its April 2020
  change) also lists a keyframe annotated with no action as a 2-column row
  ``video_id, timestamp``.
- action label maps (``ava_action_list_v2.2.pbtxt`` and the 60-class evaluation
  subset ``ava_action_list_v2.2_for_activitynet_2019.pbtxt``), protobuf text in
  either form::

      label { name: "bend/bow (at the waist)" label_id: 1 label_type: PERSON_MOVEMENT }
      item { name: "bend/bow (at the waist)" id: 1 }     # display_name: "..." optional

- excluded timestamps (``ava_{train,val}_excluded_timestamps_v2.2.csv``):
  ``video_id, timestamp``: keyframes that are not annotated and not evaluated.
- person proposals as CSV, in either of two forms:
  7 columns ``video_id, timestamp, x1, y1, x2, y2, score``, or the 8 columns of
  SlowFast's ``ava_{train,val}_predicted_boxes.csv``
  ``video_id, timestamp, x1, y1, x2, y2, action_id, score`` whose action_id column
  is ignored (it is empty or -1 there). The score is always the last column.
  Or FAIR's dense proposals pickle (``ava_dense_proposals_{split}.FAIR.recall_93.9.pkl``,
  any ``.pkl``): a dict from ``"video_id,%04d"`` to an (N, 5) array of normalised
  ``x1, y1, x2, y2, score`` (or (N, 4): score 1). It is unpickled with nothing but
  numpy arrays allowed, so a tampered file cannot run code.
- detections (the AVA evaluation result format), 8 columns
  ``video_id, timestamp, x1, y1, x2, y2, action_id, score`` (7 columns: score 1,
  and a 2-column row adds nothing, as the official evaluator reads them).

Errors and problems: a line that cannot be read at all (wrong column count, a
non-numeric field, an empty video_id) raises `VidrayError` with a one-line
``path:line: reason`` message. In files read for training (annotations,
proposals), a readable row whose content is wrong (a box outside [0, 1], an
empty or inverted box, an action id not in the label map) is never clipped or
silently dropped: it is left out of the data and returned as a `Problem` beside
it, so the caller can record it (e.g. in the ingest manifest) and go on with the
valid rows. Files read for scoring (`read_ground_truth`, `read_detections`) keep
every box as written, as the official evaluator does.

Coordinates: a normalised box ``(x1, y1, x2, y2)`` maps to pixel edges
``(x1 * W, y1 * H, x2 * W, y2 * H)`` for a W x H frame: (0, 0, 1, 1) is the whole
frame, (0, 0, W, H) in pixels; pixel column i covers [i, i + 1). Times: keyframe
second t is frame ``round((t - time_offset) * fps)`` of a video whose first frame
is at second `time_offset` (AVA's 15-minute cuts start at ``AVA_TIME_OFFSET`` = 900
and are annotated at seconds 902..1798).
"""

from __future__ import annotations

import csv
import math
import pickle
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

import numpy as np

from vidray.errors import VidrayError

__all__ = [
    "AVA_KEYFRAME_SECONDS",
    "AVA_TIME_OFFSET",
    "Annotations",
    "Box",
    "ByKeyframe",
    "Detection",
    "Detections",
    "KeyframeKey",
    "Label",
    "LabelMap",
    "LabeledBox",
    "Problem",
    "Proposals",
    "ScoredBox",
    "box_from_pixels",
    "box_to_pixels",
    "frame_to_seconds",
    "iter_detections",
    "keyframe_to_frame",
    "read_annotations",
    "read_detections",
    "read_excluded",
    "read_ground_truth",
    "read_label_map",
    "read_proposals",
    "write_annotations",
    "write_detections",
    "write_excluded",
    "write_label_map",
    "write_proposals",
]

# AVA's videos are annotated in the 15-minute cut from second 900 to 1800 of each
# movie, at one keyframe per second from 902 to 1798 inclusive.
AVA_TIME_OFFSET = 900
AVA_KEYFRAME_SECONDS = range(902, 1799)

KeyframeKey = tuple[str, int]
"""(video_id, timestamp in whole seconds): one annotated keyframe."""

_BOX_DECIMALS = 3  # as the AVA files are written
_SCORE_DECIMALS = 6


class Box(NamedTuple):
    """A box in normalised coordinates: x right, y down, each in [0, 1] when valid."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(self.x2 - self.x1, 0.0) * max(self.y2 - self.y1, 0.0)

    def problem(self) -> str | None:
        """Why the box is not a valid normalised box, or None when it is."""
        if not all(0.0 <= v <= 1.0 for v in self):
            return f"box {_box_text(self)} is outside [0, 1]"
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            return f"box {_box_text(self)} is empty or inverted (needs x1 < x2 and y1 < y2)"
        return None


@dataclass(frozen=True)
class LabeledBox:
    """One person at one keyframe with all of its actions (AVA is multi-label)."""

    box: Box
    action_ids: tuple[int, ...]  # sorted, distinct
    person_id: int = -1  # -1 when the file has no person_id column


@dataclass(frozen=True)
class ScoredBox:
    """A person proposal: a box and the person detector's score."""

    box: Box
    score: float


@dataclass(frozen=True)
class Detection:
    """One scored action of one box, as the AVA evaluation reads it."""

    box: Box
    action_id: int
    score: float


@dataclass(frozen=True)
class Problem:
    """A row that was read but left out of the data, and why."""

    path: str
    line: int  # 0 where the file has no lines (a pickle)
    reason: str
    video_id: str = ""  # the video the row is of

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.reason}"


Item = TypeVar("Item")


@dataclass(frozen=True)
class ByKeyframe(Generic[Item]):
    """What a file holds by keyframe, in key order, and the rows it left out."""

    keyframes: dict[KeyframeKey, list[Item]]
    problems: list[Problem] = field(default_factory=list)


Annotations = ByKeyframe[LabeledBox]  # ground truth: people with their actions
Proposals = ByKeyframe[ScoredBox]  # person boxes with the detector's score
Detections = ByKeyframe[Detection]  # scored actions of boxes


@dataclass(frozen=True)
class Label:
    """One action class of a label map."""

    id: int
    name: str
    label_type: str | None = None  # PERSON_MOVEMENT, OBJECT_MANIPULATION, ...
    display_name: str | None = None


@dataclass(frozen=True)
class LabelMap:
    """The action classes of a label map, in file order.

    A model head with one output per class uses `index`: the position of an action
    id among the map's ids in ascending order (0..len-1), and `ids` back.
    """

    labels: tuple[Label, ...]
    _by_id: dict[int, Label] = field(init=False, repr=False, compare=False)
    _index: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[int, Label] = {}
        for label in self.labels:
            if label.id in by_id:
                raise ValueError(f"duplicate action id {label.id} in label map")
            by_id[label.id] = label
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_index", {i: n for n, i in enumerate(sorted(by_id))})

    @property
    def ids(self) -> tuple[int, ...]:
        """The action ids in ascending order; ``ids[index(i)] == i``."""
        return tuple(self._index)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, action_id: object) -> bool:
        return action_id in self._by_id

    def __iter__(self) -> Iterator[Label]:
        return iter(self.labels)

    def name(self, action_id: int) -> str:
        """The class name of `action_id` (display_name where the map has one)."""
        label = self._by_id[action_id]
        return label.display_name or label.name

    def index(self, action_id: int) -> int:
        """The 0-based output index of `action_id` (KeyError if not in the map)."""
        return self._index[action_id]


# ---------------------------------------------------------------- conversions


def box_to_pixels(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    """A normalised box as pixel edges (x1, y1, x2, y2) in a `width` x `height` frame."""
    return (box.x1 * width, box.y1 * height, box.x2 * width, box.y2 * height)


def box_from_pixels(pixels: Sequence[float], width: int, height: int) -> Box:
    """Pixel edges (x1, y1, x2, y2) in a `width` x `height` frame as a normalised box."""
    x1, y1, x2, y2 = pixels
    return Box(x1 / width, y1 / height, x2 / width, y2 / height)


def keyframe_to_frame(timestamp: float, *, fps: float, time_offset: float = 0.0) -> int:
    """The index of the frame nearest to keyframe second `timestamp`.

    `time_offset` is the second that frame 0 shows (``AVA_TIME_OFFSET`` for AVA's
    15-minute cuts, 0 for full movies). Halves round up.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frame = math.floor((timestamp - time_offset) * fps + 0.5)
    if frame < 0:
        raise VidrayError(
            f"keyframe second {timestamp} is before the video's first frame at second "
            f"{time_offset}: check the time offset"
        )
    return frame


def frame_to_seconds(frame: int, *, fps: float, time_offset: float = 0.0) -> float:
    """The second (on the annotation clock) that frame `frame` shows."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return time_offset + frame / fps


# ---------------------------------------------------------------- CSV readers

_ANNOTATION_COLUMNS = "video_id, timestamp[, x1, y1, x2, y2, action_id[, person_id]]"
_DETECTION_COLUMNS = "video_id, timestamp[, x1, y1, x2, y2, action_id[, score]]"
_PROPOSAL_COLUMNS = "video_id, timestamp[, x1, y1, x2, y2[, action_id], score]"
_EXCLUDED_COLUMNS = "video_id, timestamp"


class _Row(NamedTuple):
    """One readable CSV row of a keyframe file."""

    line: int
    key: KeyframeKey
    box: Box | None  # None: a 2-column row, a keyframe with no box
    fields: list[str]


def _keyframe_rows(path: str | Path, counts: tuple[int, ...], columns: str) -> Iterator[_Row]:
    """The rows of a keyframe CSV: 2 columns (the 2020 form's empty keyframe) or one
    of `counts`, with the key and box parsed."""
    name = str(path)
    for line, fields in _csv_rows(path):
        _check_columns(fields, (2, *counts), name, line, columns)
        key = _key(fields, name, line)
        if len(fields) == 2:
            yield _Row(line, key, None, fields)
            continue
        coords = [_float(fields[i], label, name, line) for i, label in enumerate(Box._fields, 2)]
        yield _Row(line, key, Box(*coords), fields)


def _action_and_person(row: _Row, name: str) -> tuple[int, int]:
    action_id = _int(row.fields[6], "action_id", name, row.line)
    has_person = len(row.fields) == 8
    person_id = _int(row.fields[7], "person_id", name, row.line) if has_person else -1
    return action_id, person_id


def read_annotations(
    path: str | Path,
    *,
    label_map: LabelMap | None = None,
    excluded: Iterable[KeyframeKey] = (),
) -> Annotations:
    """Read an AVA annotation CSV for training, grouping each keyframe's rows into people.

    Rows of the same keyframe with the same box and person_id are one
    `LabeledBox` with all their action ids. Rows of `excluded` keyframes are
    dropped (not reported), and so are 2-column rows (a keyframe with no box has
    nothing to train on). Rows with an invalid box, or an action id not in
    `label_map` (when given), are left out and reported as problems.
    """
    name = str(path)
    skip = frozenset(excluded)
    grouped: dict[KeyframeKey, dict[tuple[Box, int], set[int]]] = {}
    problems: list[Problem] = []
    for row in _keyframe_rows(path, (7, 8), _ANNOTATION_COLUMNS):
        if row.box is None:
            continue
        action_id, person_id = _action_and_person(row, name)
        if row.key in skip:
            continue
        reason = row.box.problem() or _unknown_action(action_id, label_map)
        if reason:
            problems.append(Problem(name, row.line, reason, video_id=row.key[0]))
            continue
        grouped.setdefault(row.key, {}).setdefault((row.box, person_id), set()).add(action_id)
    keyframes = {
        key: [
            LabeledBox(box=box, action_ids=tuple(sorted(actions)), person_id=person_id)
            for (box, person_id), actions in people.items()
        ]
        for key, people in sorted(grouped.items())
    }
    return Annotations(keyframes=keyframes, problems=problems)


def read_ground_truth(path: str | Path) -> Annotations:
    """Read an AVA annotation CSV for scoring, as ActivityNet's evaluator reads it.

    Every row is one ground-truth instance: a `LabeledBox` with that row's one
    action id, even where a row repeats another. Boxes are kept as written
    (outside [0, 1] and empty too); an inverted box (x2 < x1 or y2 < y1), which
    the official code fails on, is a `VidrayError`. A 2-column row is a keyframe
    with no box: it is in the data with an empty list, so detections there are
    scored (as false positives). Keyframes and rows keep file order; nothing is
    left out, so there are no problems.
    """
    name = str(path)
    keyframes: dict[KeyframeKey, list[LabeledBox]] = {}
    for row in _keyframe_rows(path, (7, 8), _ANNOTATION_COLUMNS):
        people = keyframes.setdefault(row.key, [])
        if row.box is not None and (row.box.x2 < row.box.x1 or row.box.y2 < row.box.y1):
            raise VidrayError(
                f"{name}:{row.line}: box {_box_text(row.box)} is inverted (needs x1 <= x2 and "
                "y1 <= y2): ActivityNet's evaluator cannot score it either"
            )
        if row.box is not None:
            action_id, person_id = _action_and_person(row, name)
            people.append(LabeledBox(box=row.box, action_ids=(action_id,), person_id=person_id))
    return Annotations(keyframes=keyframes)


def read_excluded(path: str | Path) -> frozenset[KeyframeKey]:
    """Read an excluded-timestamps CSV (``video_id, timestamp``)."""
    name = str(path)
    keys = set()
    for line, fields in _csv_rows(path):
        _check_columns(fields, (2,), name, line, _EXCLUDED_COLUMNS)
        keys.add(_key(fields, name, line))
    return frozenset(keys)


def read_proposals(path: str | Path, *, min_score: float = 0.0) -> Proposals:
    """Read person proposals, CSV (7 or 8 columns, the score last; a 2-column row is a
    keyframe with none) or FAIR's ``.pkl``; keep score >= `min_score`.

    Within a keyframe, proposals keep file order. Invalid boxes are left out and
    reported as problems.
    """
    name = str(path)
    rows = _pickled_proposals(path) if name.endswith(".pkl") else _csv_proposals(path)
    keyframes: dict[KeyframeKey, list[ScoredBox]] = {}
    problems: list[Problem] = []
    for line, key, box, score in rows:
        if score < min_score:
            continue
        reason = box.problem()
        if reason:
            reason = reason if line else f"entry '{key[0]},{key[1]:04d}': {reason}"
            problems.append(Problem(name, line, reason, video_id=key[0]))
            continue
        keyframes.setdefault(key, []).append(ScoredBox(box=box, score=score))
    return Proposals(keyframes=dict(sorted(keyframes.items())), problems=problems)


def _csv_proposals(path: str | Path) -> Iterator[tuple[int, KeyframeKey, Box, float]]:
    for row in _keyframe_rows(path, (7, 8), _PROPOSAL_COLUMNS):
        if row.box is not None:
            yield row.line, row.key, row.box, _float(row.fields[-1], "score", str(path), row.line)


def _pickled_proposals(path: str | Path) -> Iterator[tuple[int, KeyframeKey, Box, float]]:
    """(0, key, box, score) of every box of a dense proposals pickle (no line numbers)."""
    entries = _unpickle(path)
    expected = "a dict from 'video_id,timestamp' to (N, 5) arrays of x1, y1, x2, y2, score"
    if not isinstance(entries, dict):
        raise VidrayError(f"{path}: expected {expected}, got a {type(entries).__name__}")
    for text, value in entries.items():
        parts = text.split(",") if isinstance(text, str) else []
        if len(parts) != 2:
            raise VidrayError(f"{path}: key {text!r} is not 'video_id,timestamp' ({expected})")
        key = _key([p.strip() for p in parts], str(path), 0)
        boxes = np.asarray(value, dtype=float)
        if boxes.ndim != 2 or boxes.shape[1] not in (4, 5) or not np.isfinite(boxes).all():
            raise VidrayError(
                f"{path}: entry {text!r} is not an (N, 5) array of finite numbers "
                f"(x1, y1, x2, y2, score), got shape {boxes.shape}"
            )
        for box in boxes.tolist():
            yield 0, key, Box(*box[:4]), box[4] if len(box) == 5 else 1.0


class _ArraysOnly(pickle.Unpickler):
    """Unpickles containers, numbers, strings and numpy arrays, and refuses any other
    global: a proposals file from elsewhere cannot run code here."""

    ALLOWED = frozenset(
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes, protocol 2

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, refused")
        return super().find_class(module, name)


def _unpickle(path: str | Path) -> object:
    try:
        with open(path, "rb") as handle:
            # latin1: FAIR's files were pickled by Python 2 (numpy arrays of bytes).
            return _ArraysOnly(handle, encoding="latin1").load()
    except OSError as e:
        raise VidrayError(f"cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # a damaged or foreign pickle fails with any error type
        raise VidrayError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e


def read_detections(path: str | Path, *, label_map: LabelMap | None = None) -> Detections:
    """Read detections in the AVA result format, as ActivityNet's evaluator reads them.

    8 columns, the score last (7 columns: score 1; a 2-column row adds nothing).
    Boxes are kept as written (outside [0, 1], empty or inverted too: the scoring
    decides). Rows of an action id not in `label_map` (when given) are left out
    and reported as problems. Keyframes are in the order of their first row that
    is kept, rows in file order: the order the evaluator ranks tied scores by.
    """
    name = str(path)
    keyframes: dict[KeyframeKey, list[Detection]] = {}
    problems: list[Problem] = []
    for line, key, detection in _detection_rows(path):
        reason = _unknown_action(detection.action_id, label_map)
        if reason:
            problems.append(Problem(name, line, reason, video_id=key[0]))
            continue
        keyframes.setdefault(key, []).append(detection)
    return Detections(keyframes=keyframes, problems=problems)


def iter_detections(path: str | Path) -> Iterator[tuple[KeyframeKey, Detection]]:
    """(keyframe, detection) of every row of a detections CSV in file order, read as
    `read_detections` reads them but one row at a time: a file of any size."""
    for _, key, detection in _detection_rows(path):
        yield key, detection


def _detection_rows(path: str | Path) -> Iterator[tuple[int, KeyframeKey, Detection]]:
    name = str(path)
    for row in _keyframe_rows(path, (7, 8), _DETECTION_COLUMNS):
        if row.box is None:
            continue
        action_id = _int(row.fields[6], "action_id", name, row.line)
        score = _float(row.fields[7], "score", name, row.line) if len(row.fields) == 8 else 1.0
        yield row.line, row.key, Detection(row.box, action_id, score)


def _csv_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) of every non-blank row of a CSV file."""
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise VidrayError(f"cannot read {path}: {e.strerror or e}") from e
    with handle:
        reader = csv.reader(handle)
        try:
            for fields in reader:
                stripped = [f.strip() for f in fields]
                if any(stripped):
                    yield reader.line_num, stripped
        except (csv.Error, UnicodeDecodeError) as e:
            raise VidrayError(f"{path}:{reader.line_num + 1}: not a readable CSV line ({e})") from e


def _check_columns(
    fields: list[str], counts: tuple[int, ...], name: str, line: int, columns: str
) -> None:
    if len(fields) not in counts:
        expected = ", ".join(str(c) for c in counts[:-1])
        expected = f"{expected} or {counts[-1]}" if expected else str(counts[-1])
        raise VidrayError(
            f"{name}:{line}: expected {expected} columns ({columns}), got {len(fields)}"
        )


def _key(fields: list[str], name: str, line: int) -> KeyframeKey:
    video_id = fields[0]
    if not video_id:
        raise VidrayError(f"{name}:{line}: empty video_id")
    return video_id, _int(fields[1], "timestamp", name, line)


def _int(text: str, what: str, name: str, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value.is_integer():
        return int(value)  # "902.0"
    raise VidrayError(f"{name}:{line}: {what} '{text}' is not a whole number")


def _float(text: str, what: str, name: str, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise VidrayError(f"{name}:{line}: {what} '{text}' is not a finite number")
    return value


def _unknown_action(action_id: int, label_map: LabelMap | None) -> str | None:
    if label_map is None or action_id in label_map:
        return None
    return f"action id {action_id} is not in the label map"


# ---------------------------------------------------------------- label maps

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\f\v]+)
      | (?P<newline>\n)
      | (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<punct>[{}:;,])
      | (?P<word>[A-Za-z0-9_.+\-]+)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}
_LABEL_ENTRIES = ("label", "item")


class _Token(NamedTuple):
    kind: str  # string | punct | word
    text: str  # for a string: the unescaped value
    line: int


def read_label_map(path: str | Path) -> LabelMap:
    """Read an action label map in ``label { name label_id label_type }`` or
    ``item { name id [display_name] }`` form (the two may be mixed).

    Unknown fields inside an entry are ignored; an unknown entry, a missing name
    or id, a non-integer id or a duplicate id is a `VidrayError` naming the line.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VidrayError(
            f"cannot read label map {path}: {getattr(e, 'strerror', None) or e}"
        ) from e
    tokens = _tokenize(text, name)
    labels: list[Label] = []
    seen: dict[int, int] = {}
    position = 0
    while position < len(tokens):
        head = tokens[position]
        if head.kind != "word" or head.text not in _LABEL_ENTRIES:
            raise VidrayError(
                f"{name}:{head.line}: expected 'label {{' or 'item {{', got '{head.text}'"
            )
        fields, position = _message(tokens, position + 1, name, head)
        label = _label(fields, name, head.line)
        if label.id in seen:
            raise VidrayError(
                f"{name}:{head.line}: action id {label.id} already used on line {seen[label.id]}"
            )
        seen[label.id] = head.line
        labels.append(label)
    if not labels:
        raise VidrayError(
            f"{name}: no label entries: expected 'label {{ name: ... label_id: ... }}'"
        )
    return LabelMap(tuple(labels))


def write_label_map(
    path: str | Path, labels: LabelMap | Iterable[Label], *, form: str = "label"
) -> Path:
    """Write a label map in AVA's ``label`` form (name, label_id, label_type) or the
    ``item`` form (name, id, display_name) of the evaluation subset."""
    if form not in _LABEL_ENTRIES:
        raise ValueError(f"form must be 'label' or 'item', got {form!r}")
    blocks = []
    for label in labels:
        lines = [f"{form} {{", f"  name: {_quote(label.name)}"]
        if form == "label":
            lines.append(f"  label_id: {label.id}")
            if label.label_type:
                lines.append(f"  label_type: {label.label_type}")
        else:
            lines.append(f"  id: {label.id}")
            if label.display_name:
                lines.append(f"  display_name: {_quote(label.display_name)}")
        lines.append("}")
        blocks.append("\n".join(lines) + "\n")
    return _write_text(path, "".join(blocks))


def _tokenize(text: str, name: str) -> list[_Token]:
    tokens: list[_Token] = []
    line, position = 1, 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise VidrayError(f"{name}:{line}: unexpected character {text[position]!r}")
        kind, value = match.lastgroup, match.group()
        if kind == "newline":
            line += 1
        elif kind == "string":
            tokens.append(_Token("string", _unescape(value[1:-1]), line))
        elif kind in ("punct", "word"):
            tokens.append(_Token(kind, value, line))
        position = match.end()
    return tokens


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), body)


def _message(
    tokens: list[_Token], position: int, name: str, head: _Token
) -> tuple[dict[str, _Token], int]:
    """Parse ``[:] { field: value ... }`` after an entry name; nested blocks are skipped.

    Returns the scalar fields (name -> value token) and the position after ``}``.
    """
    position = _skip(tokens, position, ":")
    if position >= len(tokens) or tokens[position].text != "{":
        raise VidrayError(f"{name}:{head.line}: expected '{{' after '{head.text}'")
    position += 1
    fields: dict[str, _Token] = {}
    while True:
        if position >= len(tokens):
            raise VidrayError(f"{name}:{head.line}: '{head.text} {{' is never closed")
        token = tokens[position]
        if token.text == "}" and token.kind == "punct":
            return fields, position + 1
        if token.kind == "punct" and token.text in ";,":
            position += 1
            continue
        if token.kind != "word":
            raise VidrayError(f"{name}:{token.line}: expected a field name, got '{token.text}'")
        after = _skip(tokens, position + 1, ":")
        if after < len(tokens) and tokens[after].text == "{" and tokens[after].kind == "punct":
            _, position = _message(tokens, position + 1, name, token)  # nested: ignored
            continue
        if after == position + 1:
            raise VidrayError(f"{name}:{token.line}: expected ':' after '{token.text}'")
        if after >= len(tokens) or tokens[after].kind == "punct":
            raise VidrayError(f"{name}:{token.line}: field '{token.text}' has no value")
        value = tokens[after]
        position = after + 1
        if value.kind == "string":  # adjacent strings concatenate
            while position < len(tokens) and tokens[position].kind == "string":
                value = value._replace(text=value.text + tokens[position].text)
                position += 1
        fields[token.text] = value


def _skip(tokens: list[_Token], position: int, text: str) -> int:
    if (
        position < len(tokens)
        and tokens[position].kind == "punct"
        and tokens[position].text == text
    ):
        return position + 1
    return position


def _label(fields: dict[str, _Token], name: str, line: int) -> Label:
    id_token = fields.get("label_id") or fields.get("id")
    if id_token is None:
        raise VidrayError(f"{name}:{line}: entry has no label_id (or id)")
    if id_token.kind != "word" or not re.fullmatch(r"[+-]?\d+", id_token.text):
        raise VidrayError(f"{name}:{id_token.line}: id '{id_token.text}' is not a whole number")
    display = fields.get("display_name")
    label_name = fields.get("name") or display
    if label_name is None or not label_name.text:
        raise VidrayError(f"{name}:{line}: entry {id_token.text} has no name")
    label_type = fields.get("label_type")
    return Label(
        id=int(id_token.text),
        name=label_name.text,
        label_type=label_type.text if label_type else None,
        display_name=display.text if display else None,
    )


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ---------------------------------------------------------------- CSV writers


def write_annotations(
    path: str | Path, keyframes: Mapping[KeyframeKey, Sequence[LabeledBox]]
) -> Path:
    """Write ground truth as an AVA annotation CSV: one row per (person, action)."""
    rows = [
        [*_key_fields(key), *_box_fields(person.box), str(action), str(person.person_id)]
        for key, people in keyframes.items()
        for person in people
        for action in person.action_ids
    ]
    return _write_rows(path, rows)


def write_excluded(path: str | Path, keys: Iterable[KeyframeKey]) -> Path:
    """Write an excluded-timestamps CSV, sorted."""
    return _write_rows(path, [_key_fields(key) for key in sorted(set(keys))])


def write_proposals(path: str | Path, keyframes: Mapping[KeyframeKey, Sequence[ScoredBox]]) -> Path:
    """Write person proposals in SlowFast's 8-column form (empty action_id column)."""
    rows = [
        [*_key_fields(key), *_box_fields(p.box), "", _score_field(p.score)]
        for key, proposals in keyframes.items()
        for p in proposals
    ]
    return _write_rows(path, rows)


def write_detections(
    path: str | Path, keyframes: Mapping[KeyframeKey, Sequence[Detection]]
) -> Path:
    """Write detections in the AVA result format (8 columns, the score last)."""
    rows = [
        [*_key_fields(key), *_box_fields(d.box), str(d.action_id), _score_field(d.score)]
        for key, detections in keyframes.items()
        for d in detections
    ]
    return _write_rows(path, rows)


def _key_fields(key: KeyframeKey) -> list[str]:
    video_id, timestamp = key
    return [video_id, f"{timestamp:04d}"]


def _box_fields(box: Box) -> list[str]:
    return [f"{v:.{_BOX_DECIMALS}f}" for v in box]


def _score_field(score: float) -> str:
    return f"{score:.{_SCORE_DECIMALS}f}"


def _box_text(box: Box) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def _write_rows(path: str | Path, rows: list[list[str]]) -> Path:
    return _write_text(path, "".join(",".join(row) + "\n" for row in rows))


def _write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def box_iou(a: Box | Sequence[float], b: Box | Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when both are empty."""
    return float(iou_matrix(np.asarray([a], float), np.asarray([b], float))[0, 0])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of boxes a (N, 4) and b (M, 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
