"""Dataset layouts -> entries: labels, splits, ids and the inputs that get quarantined."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vidray.data.sources import LAYOUTS, list_sources
from vidray.errors import VidrayError

REPO = Path(__file__).parents[1]


def touch(root, *names):
    """Placeholder files: listing never decodes, so any bytes will do."""
    for name in names:
        path = Path(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not a video")


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def by_id(listing):
    return {entry.video_id: entry for entry in listing.entries}


# ---------------------------------------------------------------- folders


def test_folders_lists_every_visible_file_with_its_class(tmp_path):
    touch(
        tmp_path,
        "cat/a.mp4",
        "cat/deeper/b.avi",
        "dog/c.mp4",
        "dog/notes.txt",
        "cat/.DS_Store",
        ".cache/x.mp4",
        "README.md",
    )
    (tmp_path / "empty_class").mkdir()
    listing = list_sources(str(tmp_path), layout="folders")
    assert listing.classes == ["cat", "dog", "empty_class"]
    entries = by_id(listing)
    assert sorted(entries) == ["README", "cat/a", "cat/deeper/b", "dog/c", "dog/notes"]
    assert (entries["cat/deeper/b"].label, entries["cat/deeper/b"].label_name) == (0, "cat")
    assert entries["dog/c"].label == 1
    assert entries["cat/a"].path == str(tmp_path / "cat" / "a.mp4")
    assert os.path.isabs(entries["cat/a"].path)
    # A non-video in a class folder is still an input: ingest quarantines it after probing.
    assert entries["dog/notes"].error is None
    assert "not inside a class folder" in entries["README"].error


def test_folders_split_is_stratified_per_class(tmp_path):
    touch(tmp_path, *[f"big/{i:02d}.mp4" for i in range(10)])
    touch(tmp_path, *[f"small/{i}.mp4" for i in range(5)])
    touch(tmp_path, "pair/0.mp4", "pair/1.mp4", "single/0.mp4")
    listing = list_sources(str(tmp_path), layout="folders", val_fraction=0.2)
    val = {name: 0 for name in listing.classes}
    for entry in listing.entries:
        val[entry.label_name] += entry.split == "val"
        assert entry.split in ("train", "val")
    assert val == {"big": 2, "small": 1, "pair": 1, "single": 0}


def test_test_fraction_holds_out_a_test_split_per_class(tmp_path):
    touch(tmp_path, *[f"big/{i:02d}.mp4" for i in range(12)])
    touch(tmp_path, "pair/0.mp4", "pair/1.mp4", "trio/0.mp4", "trio/1.mp4", "trio/2.mp4")
    listing = list_sources(str(tmp_path), layout="folders", val_fraction=0.25, test_fraction=0.25)
    counts = {name: {"train": 0, "val": 0, "test": 0} for name in listing.classes}
    for entry in listing.entries:
        counts[entry.label_name][entry.split] += 1
    assert counts["big"] == {"train": 6, "val": 3, "test": 3}
    # small classes keep at least one training video
    assert counts["pair"] == {"train": 1, "val": 1, "test": 0}
    assert counts["trio"] == {"train": 1, "val": 1, "test": 1}


def test_held_out_fractions_must_leave_videos_to_train(tmp_path):
    touch(tmp_path, "a/0.mp4")
    with pytest.raises(VidrayError, match="leave videos to train"):
        list_sources(str(tmp_path), layout="folders", val_fraction=0.5, test_fraction=0.5)


def test_split_without_val_fraction_is_all_train(tmp_path):
    touch(tmp_path, *[f"a/{i}.mp4" for i in range(4)])
    listing = list_sources(str(tmp_path), layout="folders", val_fraction=0.0)
    assert {entry.split for entry in listing.entries} == {"train"}


def test_split_is_the_same_in_another_process_with_another_hash_seed(tmp_path):
    touch(tmp_path, *[f"c{c}/video {i}.mp4" for c in range(3) for i in range(7)])
    here = sorted(
        (entry.video_id, entry.split)
        for entry in list_sources(str(tmp_path), layout="folders").entries
    )
    code = (
        "import sys\n"
        "from vidray.data.sources import list_sources\n"
        "for e in list_sources(sys.argv[1], layout='folders').entries:\n"
        "    print(e.video_id, e.split, sep='|')\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=REPO,
    )
    there = sorted(tuple(line.split("|")) for line in result.stdout.splitlines())
    assert there == here


def test_adding_videos_to_one_class_keeps_the_other_classes_split(tmp_path):
    touch(tmp_path, *[f"a/{i}.mp4" for i in range(6)], *[f"b/{i}.mp4" for i in range(6)])
    before = {e.video_id: e.split for e in list_sources(str(tmp_path), layout="folders").entries}
    touch(tmp_path, *[f"b/new{i}.mp4" for i in range(6)])
    after = {e.video_id: e.split for e in list_sources(str(tmp_path), layout="folders").entries}
    assert {k: v for k, v in after.items() if k.startswith("a/")} == {
        k: v for k, v in before.items() if k.startswith("a/")
    }


def test_videos_added_to_a_class_never_move_the_ones_it_has_to_another_split(tmp_path):
    touch(tmp_path, *[f"a/{i:02d}.mp4" for i in range(8)])
    fractions = {"val_fraction": 0.25, "test_fraction": 0.25}
    before = {
        e.video_id: e.split
        for e in list_sources(str(tmp_path), layout="folders", **fractions).entries
    }
    touch(tmp_path, *[f"a/{i:02d}.mp4" for i in range(8, 40)])
    listed = list_sources(str(tmp_path), layout="folders", **fractions)
    fresh = {e.video_id: e.split for e in listed.entries}
    # Listed afresh, positions in the hash order shift: some earlier video changes split
    # (a test video into train is a leak) ...
    assert any(fresh[video] != split for video, split in before.items())
    kept = list_sources(str(tmp_path), layout="folders", kept_splits=before, **fractions)
    after = {e.video_id: e.split for e in kept.entries}
    # ... but given the splits the dataset holds, every earlier video keeps its own,
    # and the new ones fill the class's counts: 10 val, 10 test of 40.
    assert {video: after[video] for video in before} == before
    assert sorted(after.values()).count("val") == 10
    assert sorted(after.values()).count("test") == 10


def test_names_with_spaces_and_non_ascii_keep_their_id(tmp_path):
    touch(tmp_path, "café au lait/vidéo 1.mp4", "日本/動画.mkv")
    entries = by_id(list_sources(str(tmp_path), layout="folders"))
    assert set(entries) == {"café au lait/vidéo 1", "日本/動画"}
    assert entries["café au lait/vidéo 1"].label_name == "café au lait"
    assert Path(entries["日本/動画"].path).is_file()


def test_same_name_with_two_extensions_is_a_duplicate_id(tmp_path):
    touch(tmp_path, "cat/a.mp4", "cat/a.avi", "cat/b.mp4", "cat/c.mp4")
    listing = list_sources(str(tmp_path), layout="folders", val_fraction=0.5)
    duplicates = [e for e in listing.entries if e.error]
    assert [Path(e.path).name for e in duplicates] == ["a.mp4"]  # a.avi sorts first
    assert duplicates[0].error.startswith("duplicate video_id 'cat/a'")
    # The quarantined copy takes no val place: 3 valid videos -> round(1.5) = 2 in val.
    assert sum(e.split == "val" for e in listing.entries if not e.error) == 2


# ---------------------------------------------------------------- flat


def test_flat_lists_files_recursively_unlabeled(tmp_path):
    touch(tmp_path, *[f"part{i % 2}/clip{i}.webm" for i in range(10)], ".hidden.mp4")
    listing = list_sources(str(tmp_path), layout="flat", val_fraction=0.3)
    assert listing.classes == []
    assert len(listing.entries) == 10
    assert all(e.label == -1 and e.label_name is None for e in listing.entries)
    assert sum(e.split == "val" for e in listing.entries) == 3
    assert listing.entries[0].video_id == "part0/clip0"


def test_empty_folder_is_an_empty_listing(tmp_path):
    listing = list_sources(str(tmp_path), layout="flat")
    assert listing.entries == [] and listing.classes == []


# ---------------------------------------------------------------- csv


def test_csv_layout_labels_paths_and_splits(tmp_path):
    touch(tmp_path, "data/videos/a.mp4", "data/videos/sub dir/b.mp4", "data/c.mp4")
    touch(tmp_path, "elsewhere/d.mp4", "data/e.mp4", "data/f.mp4", "data/g.mp4")
    absolute = tmp_path / "elsewhere" / "d.mp4"
    write(
        tmp_path / "data" / "labels.csv",
        "path,label,split\n"
        "videos/a.mp4,jump,training\n"
        '"videos/sub dir/b.mp4", run ,Validation\n'
        "\n"
        f"{absolute},jump,val\n"
        "c.mp4,,test\n"
        "missing.mp4,run,train\n"
        "e.mp4,,train\n"
        "f.mp4,swim,\n"
        "g.mp4,swim,\n",
    )
    listing = list_sources(str(tmp_path / "data" / "labels.csv"), layout="csv")
    assert listing.classes == ["jump", "run", "swim"]
    entries = by_id(listing)
    assert (entries["videos/a"].label, entries["videos/a"].split) == (0, "train")
    assert (entries["videos/sub dir/b"].label_name, entries["videos/sub dir/b"].split) == (
        "run",
        "val",
    )
    outside = entries[str(absolute.with_suffix("")).lstrip("/")]
    assert outside.path == str(absolute) and outside.split == "val"
    # An unlabeled test video is fine; an unlabeled training video cannot be used.
    assert (entries["c"].label, entries["c"].split, entries["c"].error) == (-1, "test", None)
    assert entries["e"].error == "missing label"
    assert entries["missing"].error == "file not found"
    # Rows without a split follow the hash rule: one of the two swim videos goes to val.
    assert sorted(entries[v].split for v in ("f", "g")) == ["train", "val"]


def test_csv_without_split_column_is_split_by_class(tmp_path):
    touch(tmp_path, *[f"{c}{i}.mp4" for c in "ab" for i in range(5)])
    write(
        tmp_path / "labels.csv",
        "path,label\n" + "".join(f"{c}{i}.mp4,{c}\n" for c in "ab" for i in range(5)),
    )
    listing = list_sources(str(tmp_path / "labels.csv"), layout="csv", val_fraction=0.4)
    for label in (0, 1):
        assert sum(e.split == "val" for e in listing.entries if e.label == label) == 2


def test_csv_listing_a_file_twice_marks_the_second_a_duplicate(tmp_path):
    touch(tmp_path, "a.mp4")
    write(tmp_path / "labels.csv", "path,label\na.mp4,x\n./a.mp4,x\n")
    first, second = list_sources(str(tmp_path / "labels.csv"), layout="csv").entries
    assert first.error is None
    assert second.error.startswith("duplicate video_id")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\na.mp4,x\na.mp4,x,train,extra,more\n", "labels.csv:3: expected 2 columns"),
        ("a.mp4,x\n", "labels.csv:1: expected a header 'path,label[,split]'"),
        ("path,label,colour\na.mp4,x,red\n", "labels.csv:1: expected a header"),
        ("", "labels.csv:1: expected a header"),
        ("path,label,split\na.mp4,x,holdout\n", "labels.csv:2: unknown split 'holdout'"),
        ('path,label\na.mp4,x\n"b.mp4,x\n', "labels.csv:3:"),
        ("path,label\n,x\n", "labels.csv:2: empty path"),
    ],
)
def test_malformed_csv_names_the_file_and_line(tmp_path, text, message):
    write(tmp_path / "labels.csv", text)
    with pytest.raises(VidrayError, match=re.escape(message)):
        list_sources(str(tmp_path / "labels.csv"), layout="csv")


def test_csv_that_is_not_utf8_is_an_error(tmp_path):
    (tmp_path / "labels.csv").write_bytes(b"path,label\n\xff\xfe.mp4,x\n")
    with pytest.raises(VidrayError, match=re.escape("labels.csv: not UTF-8")):
        list_sources(str(tmp_path / "labels.csv"), layout="csv")


def test_csv_layout_given_a_folder_is_an_error(tmp_path):
    with pytest.raises(VidrayError, match="reads a CSV file"):
        list_sources(str(tmp_path), layout="csv")


# ---------------------------------------------------------------- ucf101


def make_ucf101(root, *, lists_dir="ucfTrainTestlist", videos_dir="UCF-101"):
    lists = Path(root, lists_dir)
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 Archery\r\n3 Basketball\r\n")
    write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "Archery/v_Archery_g08_c01.avi 2\r\n"
        "Archery/v_Archery_g09_c01.avi 3\r\n"  # the folder says Archery, the number Basketball
        "Bowling/v_Bowling_g08_c01.avi 4\r\n"  # a class classInd.txt does not know
        "Basketball/v_Basketball_g08_c01.avi 3\r\n",  # listed, not on disk
    )
    write(lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n")
    write(lists / "trainlist02.txt", "Archery/v_Archery_g08_c01.avi 2\n")
    write(lists / "testlist02.txt", "Basketball/v_Basketball_g01_c01.avi\n")
    touch(
        Path(root, videos_dir),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "Archery/v_Archery_g08_c01.avi",
        "Archery/v_Archery_g09_c01.avi",
        "Bowling/v_Bowling_g08_c01.avi",
        "Basketball/v_Basketball_g01_c01.avi",
    )


def test_ucf101_official_split_labels_and_bad_rows(tmp_path):
    make_ucf101(tmp_path)
    listing = list_sources(str(tmp_path), layout="ucf101", split=1)
    assert listing.classes == ["ApplyEyeMakeup", "Archery", "Basketball"]
    entries = by_id(listing)
    good = entries["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"]
    assert (good.label, good.split, good.error) == (0, "train", None)
    assert good.path == str(tmp_path / "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi")
    assert entries["Archery/v_Archery_g08_c01"].label == 1
    test = entries["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"]
    assert (test.label, test.split, test.error) == (0, "test", None)
    assert "disagrees with the folder 'Archery'" in entries["Archery/v_Archery_g09_c01"].error
    assert entries["Bowling/v_Bowling_g08_c01"].error == "label 'Bowling' not in classInd.txt"
    assert entries["Basketball/v_Basketball_g08_c01"].error == "file not found"
    assert len(listing.entries) == 6


def test_ucf101_lists_and_videos_directly_in_the_root(tmp_path):
    make_ucf101(tmp_path, lists_dir=".", videos_dir=".")
    listing = list_sources(str(tmp_path), layout="ucf101", split=2)
    assert [(e.video_id, e.split, e.label, e.error) for e in listing.entries] == [
        ("Archery/v_Archery_g08_c01", "train", 1, None),
        ("Basketball/v_Basketball_g01_c01", "test", 2, None),
    ]


def test_ucf101_split_outside_1_to_3_is_an_error(tmp_path):
    make_ucf101(tmp_path)
    with pytest.raises(VidrayError, match="splits 1, 2 and 3"):
        list_sources(str(tmp_path), layout="ucf101", split=4)


def test_ucf101_without_class_index_names_the_fix(tmp_path):
    touch(tmp_path, "UCF-101/Archery/v_Archery_g01_c01.avi")
    with pytest.raises(VidrayError, match=re.escape("no classInd.txt")):
        list_sources(str(tmp_path), layout="ucf101")


def test_ucf101_malformed_class_index_names_the_line(tmp_path):
    make_ucf101(tmp_path)
    write(tmp_path / "ucfTrainTestlist/classInd.txt", "1 ApplyEyeMakeup\nArchery\n")
    with pytest.raises(
        VidrayError, match=re.escape("classInd.txt:2: expected '<index> <class name>'")
    ):
        list_sources(str(tmp_path), layout="ucf101")


# ---------------------------------------------------------------- kinetics


KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def test_kinetics_trimmed_clips_full_videos_and_missing_ones(tmp_path):
    touch(
        tmp_path,
        "train/abseiling/abc-_x1_000010_000020.mp4",  # trimmed clip: used as is
        "raw/full_video.mkv",  # only the full video: trimmed at decode
        "raw/both.webm",
        "train/zumba/both_000005_000015.mp4",  # trimmed and full: the trimmed one wins
        "notes/abc-_x1.txt",  # not a video extension: never matched
    )
    write(
        tmp_path / "kinetics400_train.csv",
        KINETICS_HEADER + "abseiling,abc-_x1,10,20,train,0\n"
        "zumba,full_video,30,40,validate,0\n"
        "zumba,both,5,15,train,0\n"
        "abseiling,gone,0,10,train,0\n"
        ",unlabeled,0,10,test,0\n",
    )
    listing = list_sources(str(tmp_path / "kinetics400_train.csv"), layout="kinetics")
    assert listing.classes == ["abseiling", "zumba"]
    entries = by_id(listing)

    trimmed = entries["abc-_x1_000010_000020"]
    assert trimmed.path == str(tmp_path / "train/abseiling/abc-_x1_000010_000020.mp4")
    assert (trimmed.start_sec, trimmed.end_sec, trimmed.label, trimmed.split) == (
        0.0,
        None,
        0,
        "train",
    )
    full = entries["full_video_000030_000040"]
    assert full.path == str(tmp_path / "raw/full_video.mkv")
    assert (full.start_sec, full.end_sec, full.label, full.split) == (30.0, 40.0, 1, "val")
    assert entries["both_000005_000015"].path.endswith("both_000005_000015.mp4")
    assert entries["gone_000000_000010"].error.startswith("file not found")
    assert entries["unlabeled_000000_000010"].error.startswith("file not found")
    assert entries["unlabeled_000000_000010"].label == -1


def test_kinetics_missing_label_and_duplicate_rows(tmp_path):
    touch(tmp_path, "clips/a_000000_000010.mp4", "clips/b_000000_000010.mp4")
    write(
        tmp_path / "k.csv",
        "label,youtube_id,time_start,time_end,split\n"
        "run,a,0,10,train\n"
        "run,a,0,10,train\n"
        ",b,0,10,train\n",
    )
    first, second, unlabeled = list_sources(str(tmp_path / "k.csv"), layout="kinetics").entries
    assert first.error is None
    assert second.error.startswith("duplicate video_id 'a_000000_000010'")
    assert unlabeled.error == "missing label"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("label,youtube_id,time_start,split\nrun,a,0,train\n", "k.csv:1: expected a header"),
        (KINETICS_HEADER + "run,a,zero,10,train,0\n", "k.csv:2: time_start 'zero' is not a number"),
        (KINETICS_HEADER + "run,a,0,10,holdout,0\n", "k.csv:2: unknown split 'holdout'"),
        (KINETICS_HEADER + "run,a,0,10\n", "k.csv:2: expected 6 columns"),
    ],
)
def test_malformed_kinetics_csv_names_the_file_and_line(tmp_path, text, message):
    write(tmp_path / "k.csv", text)
    with pytest.raises(VidrayError, match=re.escape(message)):
        list_sources(str(tmp_path / "k.csv"), layout="kinetics")


# ---------------------------------------------------------------- bad inputs


def test_unknown_layout_lists_the_layouts(tmp_path):
    with pytest.raises(VidrayError) as error:
        list_sources(str(tmp_path), layout="imagenet")
    for layout in LAYOUTS:
        assert layout in str(error.value)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_input_is_an_error(tmp_path, layout):
    with pytest.raises(VidrayError, match="does not exist"):
        list_sources(str(tmp_path / "nowhere"), layout=layout)


def test_folder_layout_given_a_file_is_an_error(tmp_path):
    touch(tmp_path, "a.mp4")
    with pytest.raises(VidrayError, match="reads a folder"):
        list_sources(str(tmp_path / "a.mp4"), layout="folders")


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_val_fraction_outside_0_to_1_is_an_error(tmp_path, fraction):
    with pytest.raises(VidrayError, match="val_fraction"):
        list_sources(str(tmp_path), layout="flat", val_fraction=fraction)
