"""Dataset layouts on disk -> one `SourceEntry` per input video file.

Listing is the first stage of ingest and does not open any video: it finds the
files, their labels and their split, and marks entries it can already tell are bad
(a file that is missing, a label that is unknown or missing, a duplicate id) with
an ``error`` so ingest quarantines them with that reason instead of decoding them.
Input the user must fix before anything can run (a missing root, a malformed CSV,
an unknown layout) is a `VidrayError`.

Layouts (``LAYOUTS``):

- ``folders``: ``root/<class>/**/<file>``; classes are the class folders sorted by name.
- ``flat``: every file under ``root``, unlabeled.
- ``csv``: a CSV with header ``path,label[,split]``; paths relative to the CSV's folder.
- ``ucf101``: the UCF101 root with ``classInd.txt``, ``trainlist0N.txt`` and
  ``testlist0N.txt`` (in the root or ``ucfTrainTestlist/``), videos in the root or
  ``UCF-101/``.
- ``kinetics``: a Kinetics annotation CSV; videos found anywhere under its folder,
  either trimmed clips ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` or full videos
  ``<youtube_id>.<ext>`` (trimmed at decode time from ``start_sec``/``end_sec``).
- ``ava``: AVA v2.2's videos and annotation files, one entry per movie carrying its
  keyframes' boxes and actions (`vidray.data.ava`); classes are the label map's.

Where a layout names no split, videos are split by a deterministic rule: within a
group (a class, or the whole dataset for ``flat``), videos are ordered by the SHA-1
of their ``video_id``; the first ``round(val_fraction * n)`` go to ``val``, the
next ``round(test_fraction * n)`` to ``test`` (each at least one when the group
allows, never the whole group), the rest to ``train``.
Adding videos to one class leaves the other classes' splits unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePath

from vidray import storage
from vidray.errors import VidrayError

LAYOUTS = ("folders", "flat", "csv", "ucf101", "kinetics", "ava")
SPLITS = ("train", "val", "test")
UCF101_SPLITS = (1, 2, 3)
# The names a video file has: only these are looked up by YouTube id (kinetics), and a
# folder with none of them is not a dataset (`has_video_files`).
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".mkv",
        ".webm",
        ".avi",
        ".mov",
        ".m4v",
        ".flv",
        ".mpg",
        ".mpeg",
        ".3gp",
        ".ts",
        ".mts",
        ".m2ts",
        ".wmv",
        ".asf",
        ".ogv",
        ".vob",
        ".mxf",
        ".f4v",
        ".y4m",
    }
)

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "validate": "val",
    "test": "test",
    "testing": "test",
}
_CSV_HEADER = "path,label[,split]"
_KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
_UCF_TRAIN_ROW = re.compile(r"^(.*\S)\s+(\d+)$")


@dataclass(frozen=True)
class SourceEntry:
    """One input video file, with where it belongs in the dataset."""

    path: str  # absolute path of the video file
    video_id: str  # path relative to the dataset root, no extension, posix separators
    label: int  # -1 when unlabeled
    label_name: str | None
    split: str  # "train" | "val" | "test"
    start_sec: float = 0.0  # trim start (Kinetics full videos)
    end_sec: float | None = None  # trim end
    error: str | None = None  # set: quarantined before decoding, with this reason
    keyframes: str | None = None  # ava: JSON list of annotated keyframes (`vidray.data.ava`)
    problems: str | None = None  # annotation rows left out, noted on the manifest row


@dataclass(frozen=True)
class SourceListing:
    """Every input entry of a dataset, and its class names (index = label)."""

    entries: list[SourceEntry]
    classes: list[str]
    class_ids: list[int] | None = None  # ava: the label map's action id of each class


@dataclass
class _Row:
    """An entry under construction: its split may still await the hash rule."""

    path: str
    video_id: str
    label: int = -1
    label_name: str | None = None
    split: str | None = None
    start_sec: float = 0.0
    end_sec: float | None = None
    error: str | None = None


def split_settings(layout: str) -> tuple[str, ...]:
    """The `list_sources` arguments that decide which split a video of ``layout`` is in:
    UCF101's official split, none for AVA's (its annotation files name it), the
    held-out fractions for the layouts where a video may name no split."""
    if layout == "ucf101":
        return ("split",)
    if layout == "ava":
        return ()
    return ("val_fraction", "test_fraction")


def list_sources(
    input_path: str,
    *,
    layout: str,
    split: int = 1,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    exclude: str | None = None,
    kept_splits: Mapping[str, str] | None = None,
) -> SourceListing:
    """List the videos of a dataset laid out as ``layout``.

    Args:
        input_path: the dataset root (``folders``, ``flat``, ``ucf101``) or the CSV
            file (``csv``, ``kinetics``). Local paths only.
        layout: one of ``LAYOUTS``.
        split: the official UCF101 split, 1, 2 or 3; other layouts ignore it.
        val_fraction: the share of each group sent to ``val`` where the layout
            names no split, in [0, 1); ``ucf101`` has only its official train and
            test lists, so it never has a ``val`` split.
        test_fraction: likewise for ``test`` (default 0: no test split).
        exclude: a folder (a path or a URI under ``input_path``) whose files are
            never listed: an ingest output kept inside its input folder.
        kept_splits: video id -> the split an earlier ingest gave it. Where the
            layout names no split, such a video keeps it, and the others fill each
            group's val and test counts around them: adding videos to a dataset
            never moves one it holds to another split.

    Returns:
        The entries in a deterministic order, and the class names. An empty listing
        is returned as is: ingest reports it.

    Raises:
        VidrayError: an unknown layout, a missing input, a malformed CSV or list file.
    """
    _check_listing(layout, val_fraction, test_fraction)
    if storage.is_uri(input_path):
        rows, classes = _remote(input_path, layout=layout, exclude=exclude)
    elif layout == "ava":  # its splits come with its annotation files
        return _ava(_local_input(input_path, layout))
    else:
        path = _local_input(input_path, layout)
        rows, classes = _local_rows(path, input_path, layout, split, _Excluded(exclude))
    entries = _finish(
        rows,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        stratified=layout != "flat",
        kept_splits=kept_splits or {},
    )
    return SourceListing(entries=entries, classes=classes)


def _check_listing(layout: str, val_fraction: float, test_fraction: float) -> None:
    if layout not in LAYOUTS:
        raise VidrayError(f"unknown dataset layout '{layout}': use one of {', '.join(LAYOUTS)}")
    if not 0 <= val_fraction < 1:
        raise VidrayError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise VidrayError(
            f"test_fraction must be in [0, 1) and leave videos to train, got {test_fraction} "
            f"with val_fraction {val_fraction}"
        )


def _local_input(input_path: str, layout: str) -> str:
    """``input_path`` absolute, once it is the kind of path ``layout`` reads."""
    path = os.path.abspath(os.path.expanduser(input_path))
    if not os.path.exists(path):
        raise VidrayError(f"input path {input_path} does not exist: check the ingest input")
    wants_file = layout in ("csv", "kinetics")
    if wants_file and not os.path.isfile(path):
        raise VidrayError(f"layout '{layout}' reads a CSV file, but {input_path} is a folder")
    if not wants_file and not os.path.isdir(path):
        raise VidrayError(f"layout '{layout}' reads a folder, but {input_path} is a file")
    return path


def _local_rows(
    path: str, input_path: str, layout: str, split: int, skip: _Excluded
) -> tuple[list[_Row], list[str]]:
    """The rows and class names of a local input in one of the layouts without AVA."""
    if layout == "folders":
        return _folders(path, skip)
    if layout == "flat":
        return _flat(path, skip), []
    if layout == "csv":
        return _csv(path, name=input_path)
    if layout == "ucf101":
        return _ucf101(path, split=split)
    return _kinetics(path, name=input_path, skip=skip)


# ---------------------------------------------------------------- layouts


def _ava(root: str) -> SourceListing:
    from vidray.data.ava import list_ava

    rows, classes, ids = list_ava(root)
    entries = [
        SourceEntry(
            path=row["path"],
            video_id=row["video_id"],
            label=-1,  # detection: the labels are per box, in keyframes
            label_name=None,
            split=row["split"],
            error=row["error"],
            keyframes=row["keyframes"],
            problems=row["problems"],
        )
        for row in rows
    ]
    return SourceListing(entries=entries, classes=classes, class_ids=ids)


def _remote(uri: str, *, layout: str, exclude: str | None) -> tuple[list[_Row], list[str]]:
    """The folders or flat layout under an object-store prefix (s3://, gs://): the
    same rules, with class folders found from the files' keys (a store has no empty
    folders). Ingest tasks copy each video to local disk to decode it."""
    if layout not in ("folders", "flat"):
        raise VidrayError(
            f"layout '{layout}' reads local files; for {uri} use layout folders or flat "
            "(or copy the dataset to a local disk)"
        )
    inside = None
    if exclude and exclude.rstrip("/").startswith(uri.rstrip("/") + "/"):
        inside = exclude.rstrip("/")[len(uri.rstrip("/")) + 1 :] + "/"
    files = [
        rel
        for rel in storage.list_files(uri)
        if all(_visible(p) for p in rel.split("/")) and not (inside and rel.startswith(inside))
    ]
    if not files:
        raise VidrayError(f"input path {uri} holds no files: check the ingest input")
    if layout == "flat":
        return [
            _Row(path=storage.join(uri, rel), video_id=_strip_extension(rel)) for rel in files
        ], []
    classes = sorted({rel.split("/", 1)[0] for rel in files if "/" in rel})
    return _class_rows(files, classes, lambda rel: storage.join(uri, rel)), classes


def _folders(root: str, skip: _Excluded) -> tuple[list[_Row], list[str]]:
    with os.scandir(root) as items:
        classes = sorted(
            item.name
            for item in items
            if _visible(item.name) and item.is_dir() and not skip(item.path)
        )
    rows = _class_rows(_walk_files(root, skip), classes, lambda rel: os.path.join(root, rel))
    return rows, classes


def _class_rows(files: list[str], classes: list[str], path_of: Callable[[str], str]) -> list[_Row]:
    """Rows of files named relative to the root: the first folder is the class."""
    index = {name: label for label, name in enumerate(classes)}
    rows = []
    for rel in files:
        class_name, inside, _ = rel.partition("/")
        row = _Row(path=path_of(rel), video_id=_strip_extension(rel))
        if inside:
            row.label, row.label_name = index[class_name], class_name
        else:
            row.error = "not inside a class folder: move it to <root>/<class>/ or use layout 'flat'"
        rows.append(row)
    return rows


def _flat(root: str, skip: _Excluded) -> list[_Row]:
    return [
        _Row(path=os.path.join(root, rel), video_id=_strip_extension(rel))
        for rel in _walk_files(root, skip)
    ]


def _csv(csv_path: str, *, name: str) -> tuple[list[_Row], list[str]]:
    base = os.path.dirname(csv_path)
    rows: list[_Row] = []
    for line, record in _read_csv(csv_path, name=name, required=("path", "label"), exact=True):
        rel = record["path"]
        if not rel:
            raise VidrayError(f"{name}:{line}: empty path")
        path = os.path.normpath(os.path.join(base, rel))
        row = _Row(path=path, video_id=_video_id_under(path, base))
        row.split = _split_value(record.get("split", ""), name=name, line=line)
        row.label_name = record["label"] or None
        if not os.path.isfile(path):
            row.error = "file not found"
        rows.append(row)
    return rows, _label_rows(rows)


def _ucf101(root: str, *, split: int) -> tuple[list[_Row], list[str]]:
    if split not in UCF101_SPLITS:
        raise VidrayError(f"UCF101 has splits 1, 2 and 3, got split {split}")
    list_dir = next(
        (d for d in (root, os.path.join(root, "ucfTrainTestlist")) if _is_file(d, "classInd.txt")),
        None,
    )
    if list_dir is None:
        raise VidrayError(
            f"{root}: no classInd.txt in it or in ucfTrainTestlist/; unpack "
            "UCF101TrainTestSplits-RecognitionTask.zip into the dataset root"
        )
    video_root = os.path.join(root, "UCF-101")
    if not os.path.isdir(video_root):
        video_root = root
    classes = _read_class_index(os.path.join(list_dir, "classInd.txt"))
    index = {class_name: label for label, class_name in enumerate(classes)}

    rows = []
    for split_name, list_name in (
        ("train", f"trainlist0{split}.txt"),
        ("test", f"testlist0{split}.txt"),
    ):
        list_path = os.path.join(list_dir, list_name)
        if not os.path.isfile(list_path):
            raise VidrayError(f"{list_dir}: {list_name} is missing; it ships with classInd.txt")
        for line, text in _read_lines(list_path):
            match = _UCF_TRAIN_ROW.match(text) if split_name == "train" else None
            rel, number = (match[1], int(match[2])) if match else (text, None)
            rel = rel.replace("\\", "/")
            path = os.path.join(video_root, rel)
            row = _Row(path=path, video_id=_strip_extension(rel), split=split_name)
            class_name = rel.partition("/")[0]
            if class_name not in index:
                row.error = f"label '{class_name}' not in classInd.txt"
            else:
                row.label, row.label_name = index[class_name], class_name
                if number is not None and number != row.label + 1:
                    listed = classes[number - 1] if 1 <= number <= len(classes) else "no class"
                    row.error = (
                        f"{list_name}:{line}: label {number} ({listed}) disagrees with "
                        f"the folder '{class_name}'"
                    )
            if row.error is None and not os.path.isfile(path):
                row.error = "file not found"
            rows.append(row)
    return rows, classes


def _kinetics(csv_path: str, *, name: str, skip: _Excluded) -> tuple[list[_Row], list[str]]:
    base = os.path.dirname(csv_path)
    # One walk for the whole dataset: looking each row up on disk would cost a
    # directory search per clip on a 650k-clip annotation file.
    by_stem: dict[str, str] = {}
    for rel in _walk_files(base, skip):
        stem, extension = posixpath.splitext(posixpath.basename(rel))
        if extension.lower() in VIDEO_EXTENSIONS:
            by_stem.setdefault(stem, os.path.join(base, rel))

    rows: list[_Row] = []
    required = _KINETICS_COLUMNS[1:]  # a test-set CSV may come without labels
    for line, record in _read_csv(csv_path, name=name, required=required, exact=False):
        youtube_id = record["youtube_id"]
        if not youtube_id:
            raise VidrayError(f"{name}:{line}: empty youtube_id")
        start = _seconds(record["time_start"], column="time_start", name=name, line=line)
        end = _seconds(record["time_end"], column="time_end", name=name, line=line)
        clip_id = f"{youtube_id}_{int(start):06d}_{int(end):06d}"
        row = _Row(path="", video_id=clip_id)
        row.split = _split_value(record["split"], name=name, line=line)
        row.label_name = record.get("label") or None
        if clip_id in by_stem:
            row.path = by_stem[clip_id]
        elif youtube_id in by_stem:
            row.path, row.start_sec, row.end_sec = by_stem[youtube_id], start, end
        else:
            row.path = os.path.join(base, clip_id)
            row.error = f"file not found: no {clip_id}.<ext> or {youtube_id}.<ext> under {base}"
        rows.append(row)
    return rows, _label_rows(rows)


# ---------------------------------------------------------------- shared steps


def _finish(
    rows: list[_Row],
    *,
    val_fraction: float,
    test_fraction: float,
    stratified: bool,
    kept_splits: Mapping[str, str],
) -> list[SourceEntry]:
    """Mark duplicate ids, split the rows that still need a split, freeze them."""
    first_path: dict[str, str] = {}
    for row in rows:
        if row.video_id in first_path:
            row.error = row.error or (
                f"duplicate video_id '{row.video_id}' (also {first_path[row.video_id]})"
            )
        else:
            first_path[row.video_id] = row.path

    groups: dict[int, list[_Row]] = {}
    for row in rows:
        if row.split is None and row.error is None:
            groups.setdefault(row.label if stratified else -1, []).append(row)
    for group in groups.values():
        _split_group(group, val_fraction, test_fraction, kept_splits)

    return [
        SourceEntry(
            path=row.path,
            video_id=row.video_id,
            label=row.label,
            label_name=row.label_name,
            # A quarantined entry never reaches training; "train" just fills the column.
            split=row.split or "train",
            start_sec=row.start_sec,
            end_sec=row.end_sec,
            error=row.error,
        )
        for row in rows
    ]


def _held_out_count(n: int, fraction: float, *, keep: int) -> int:
    """round(fraction * n) of a group of n, at least one, leaving ``keep`` videos."""
    if fraction == 0 or n - keep < 1:
        return 0
    return min(max(round(fraction * n), 1), n - keep)


def video_key(video_id: str) -> int:
    """A stable 63-bit integer for a video id, the same in every process and run: the
    id's column in shards and the order of videos within a split group. The one
    stable hash of the package (shard and scratch names use it too)."""
    return stable_hash(video_id)


def stable_hash(text: str) -> int:
    """63 bits of ``text``'s BLAKE2b digest: fits a signed int64 column."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def _split_group(
    group: list[_Row], val_fraction: float, test_fraction: float, kept: Mapping[str, str]
) -> None:
    """Give ``round(fraction * n)`` videos of the group to val and to test (see
    `_held_out_count`): those ``kept`` there first, then the others in the order of
    their stable `video_key` (never Python's hash(), which is salted per process)."""
    n_val = _held_out_count(len(group), val_fraction, keep=1)
    n_test = _held_out_count(len(group), test_fraction, keep=n_val + 1)
    new = []
    for row in group:
        if row.video_id in kept:
            row.split = kept[row.video_id]
        else:
            new.append(row)
    open_val = max(n_val - sum(row.split == "val" for row in group), 0)
    open_test = max(n_test - sum(row.split == "test" for row in group), 0)
    new.sort(key=lambda row: (video_key(row.video_id), row.video_id))
    for position, row in enumerate(new):
        held_out = "val" if position < open_val else "test"
        row.split = held_out if position < open_val + open_test else "train"


def _label_rows(rows: list[_Row]) -> list[str]:
    """Number the label names of CSV rows; flag the rows that need a label and lack one."""
    classes = sorted({row.label_name for row in rows if row.label_name})
    index = {class_name: label for label, class_name in enumerate(classes)}
    for row in rows:
        if row.label_name:
            row.label = index[row.label_name]
        elif row.split != "test":
            # A test set may be unlabeled; a training or val video cannot be.
            row.error = row.error or "missing label"
    return classes


class _Excluded:
    """Whether a local folder is the excluded one (compared by device and inode, so a
    symlink or another spelling of it is caught too)."""

    def __init__(self, folder: str | None) -> None:
        try:
            stat = os.stat(folder) if folder and not storage.is_uri(folder) else None
        except OSError:  # not made yet: nothing in it to list
            stat = None
        self._id = (stat.st_dev, stat.st_ino) if stat else None

    def __call__(self, path: str) -> bool:
        if self._id is None:
            return False
        try:
            stat = os.stat(path)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._id


def _walk_files(root: str, skip: _Excluded) -> list[str]:
    """Every non-hidden file under root, as sorted posix paths relative to root,
    leaving out the folder ``skip`` names."""
    found: list[str] = []
    pending = [("", root)]
    root_stat = os.stat(root)
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    while pending:
        rel_dir, directory = pending.pop()
        try:
            with os.scandir(directory) as items:
                for item in items:
                    if not _visible(item.name):
                        continue
                    rel = f"{rel_dir}{item.name}"
                    if item.is_dir():
                        if skip(item.path):
                            continue
                        # Followed symlinks could loop; a folder seen once is enough.
                        stat = item.stat()
                        if (stat.st_dev, stat.st_ino) not in visited:
                            visited.add((stat.st_dev, stat.st_ino))
                            pending.append((f"{rel}/", item.path))
                    elif item.is_file():
                        found.append(rel)
        except OSError as exc:
            raise VidrayError(f"cannot list {directory}: {exc.strerror}") from exc
    found.sort()
    return found


def has_video_files(listing: SourceListing) -> bool:
    """Whether any listed file has a video file's extension (`VIDEO_EXTENSIONS`)."""
    return any(
        posixpath.splitext(entry.path)[1].lower() in VIDEO_EXTENSIONS for entry in listing.entries
    )


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_file(directory: str, name: str) -> bool:
    return os.path.isfile(os.path.join(directory, name))


def _strip_extension(rel: str) -> str:
    return posixpath.splitext(rel)[0]


def _video_id_under(path: str, base: str) -> str:
    rel = os.path.relpath(path, base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        # Outside the CSV's folder: the absolute path (minus its root) is the only stable id.
        pure = PurePath(path)
        rel = str(pure.relative_to(pure.anchor))
    return _strip_extension(PurePath(rel).as_posix())


def _split_value(value: str, *, name: str, line: int) -> str | None:
    if not value:
        return None
    split = _SPLIT_ALIASES.get(value.lower())
    if split is None:
        raise VidrayError(f"{name}:{line}: unknown split '{value}': use train, val or test")
    return split


def _seconds(value: str, *, column: str, name: str, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise VidrayError(f"{name}:{line}: {column} '{value}' is not a number") from None


def _read_csv(
    csv_path: str, *, name: str, required: tuple[str, ...], exact: bool
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {column: stripped value}) for each non-blank data row.

    ``exact``: the header must hold the required columns plus at most ``split``
    (the ``csv`` layout); otherwise extra columns are tolerated (Kinetics ``is_cc``).
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, strict=True)
            try:
                header = [column.strip().lower() for column in next(reader, [])]
                expected = _CSV_HEADER if exact else ",".join(_KINETICS_COLUMNS)
                allowed = set(required) | {"split"}
                if (
                    not set(required) <= set(header)
                    or len(set(header)) != len(header)
                    or (exact and not set(header) <= allowed)
                ):
                    raise VidrayError(
                        f"{name}:1: expected a header '{expected}', got '{','.join(header)}'"
                    )
                for fields in reader:
                    values = [field.strip() for field in fields]
                    if not any(values):
                        continue
                    if len(values) != len(header):
                        raise VidrayError(
                            f"{name}:{reader.line_num}: expected {len(header)} columns "
                            f"({','.join(header)}), got {len(values)}"
                        )
                    yield reader.line_num, dict(zip(header, values, strict=True))
            except csv.Error as exc:
                raise VidrayError(f"{name}:{reader.line_num}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise VidrayError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, stripped text) for the non-blank lines of a list file."""
    try:
        with open(path, encoding="utf-8-sig") as file:
            for line, text in enumerate(file, start=1):
                if text.strip():
                    yield line, text.strip()
    except UnicodeDecodeError as exc:
        raise VidrayError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_class_index(path: str) -> list[str]:
    """classInd.txt: '<1-based index> <class name>' per line -> names by 0-based label."""
    by_index: dict[int, str] = {}
    for line, text in _read_lines(path):
        fields = text.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise VidrayError(f"{path}:{line}: expected '<index> <class name>', got '{text}'")
        by_index[int(fields[0])] = fields[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise VidrayError(f"{path}: class indices must run 1..{len(by_index)} without gaps")
    if len(set(by_index.values())) != len(by_index):
        raise VidrayError(f"{path}: a class name appears twice")
    return [by_index[number] for number in sorted(by_index)]
