"""Frame-mAP at IoU 0.5 (ActivityNet's AVA protocol): a hand-worked case for each of its
rules, and agreement with a transcription of the official code on random cases."""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np
import pytest
import torch

from vidray.data.ava_files import (
    Box,
    Detection,
    Label,
    LabeledBox,
    LabelMap,
    box_iou,
    write_excluded,
    write_label_map,
)
from vidray.detect.evaluate import collect
from vidray.detect.frame_map import TopDetections, average_precision, frame_map, frame_map_of_files
from vidray.device import IMAGENET
from vidray.errors import VidrayError

A = Box(0.1, 0.1, 0.4, 0.9)
B = Box(0.5, 0.2, 0.9, 0.8)
FULL = Box(0.0, 0.0, 1.0, 1.0)
ELSEWHERE = Box(0.0, 0.0, 0.05, 0.05)  # IoU 0 with A and B


def gt(*people: tuple[Box, tuple[int, ...]]) -> list[LabeledBox]:
    return [LabeledBox(box, actions, person) for person, (box, actions) in enumerate(people)]


def det(box: Box, action_id: int, score: float) -> Detection:
    return Detection(box, action_id, score)


def test_perfect_detections_score_one():
    truth = {
        ("v", 902): gt((A, (1, 2)), (B, (2,))),
        ("v", 903): gt((B, (3,))),
    }
    detections = {
        ("v", 902): [det(A, 1, 0.9), det(A, 2, 0.8), det(B, 2, 0.7)],
        ("v", 903): [det(B, 3, 0.6)],
    }
    result = frame_map(truth, detections)
    assert result.mean_ap == 1.0
    assert result.per_class == {1: 1.0, 2: 1.0, 3: 1.0}
    assert result.num_ground_truth == {1: 1, 2: 2, 3: 1}
    assert result.num_detections == {1: 1, 2: 2, 3: 1}


def test_false_positive_ranked_first_halves_ap():
    # Ranks: FP (0.9), TP (0.8); one GT box.
    # precision 0/1, 1/2 at recall 0, 1 -> envelope 1/2 over recall (0, 1] -> AP = 0.5
    truth = {("v", 902): gt((A, (1,)))}
    detections = {("v", 902): [det(A, 1, 0.8), det(B, 1, 0.9)]}
    assert frame_map(truth, detections).per_class == {1: 0.5}


def test_ap_is_area_under_precision_envelope():
    # Two GT boxes (keyframes 902, 903); ranks TP (0.9), FP (0.8), TP (0.7):
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Envelope: 1 on (0, 1/2], 2/3 on (1/2, 1] -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    truth = {("v", 902): gt((A, (1,))), ("v", 903): gt((B, (1,)))}
    detections = {
        ("v", 902): [det(A, 1, 0.9), det(B, 1, 0.8)],
        ("v", 903): [det(B, 1, 0.7)],
    }
    assert frame_map(truth, detections).mean_ap == pytest.approx(5 / 6)


def test_iou_threshold_is_inclusive_and_049_is_a_miss():
    # Inside FULL (area 1), a full-height box of width w has IoU exactly w.
    at_049, at_050 = Box(0.0, 0.0, 0.49, 1.0), Box(0.0, 0.0, 0.5, 1.0)
    assert box_iou(at_049, FULL) == pytest.approx(0.49)
    assert box_iou(at_050, FULL) == 0.5
    truth = {("v", 902): gt((FULL, (1,)))}
    assert frame_map(truth, {("v", 902): [det(at_049, 1, 0.9)]}).mean_ap == 0.0
    assert frame_map(truth, {("v", 902): [det(at_050, 1, 0.9)]}).mean_ap == 1.0


def test_duplicate_detection_is_a_false_positive():
    # GT: A at 902, B at 903. Ranks: A (TP, 0.9), A again (duplicate: FP, 0.8), B (TP, 0.7).
    # Same as TP, FP, TP above: AP = 5/6 (a duplicate counted as TP would give 1.0).
    truth = {("v", 902): gt((A, (1,))), ("v", 903): gt((B, (1,)))}
    detections = {
        ("v", 902): [det(A, 1, 0.9), det(A, 1, 0.8)],
        ("v", 903): [det(B, 1, 0.7)],
    }
    assert frame_map(truth, detections).mean_ap == pytest.approx(5 / 6)


def test_matching_takes_the_best_box_even_if_it_is_matched():
    # G1 = x [0, .4], G2 = x [.1, .5] (full height). d1 = G1 (0.9) matches G1.
    # d2 = x [0, .42] (0.8): IoU .4/.42 = .95 with G1 (matched), .32/.5 = .64 with G2.
    # d2's best box is taken -> FP (it does not fall back to G2); precision 1, 1/2 at
    # recall 1/2 -> AP = 1/2.
    g1, g2, d2 = Box(0.0, 0.0, 0.4, 1.0), Box(0.1, 0.0, 0.5, 1.0), Box(0.0, 0.0, 0.42, 1.0)
    truth = {("v", 902): gt((g1, (1,)), (g2, (1,)))}
    detections = {("v", 902): [det(g1, 1, 0.9), det(d2, 1, 0.8)]}
    assert frame_map(truth, detections).mean_ap == pytest.approx(0.5)


def test_detections_off_the_ground_truth_keyframes_are_ignored_on_them_false_positives():
    # 950 is not a ground-truth keyframe: its detection is ignored -> AP 1. 951 is one
    # with no box (the 2020 files' 2-column row): its detection (0.9) is a false
    # positive ranked first -> precision 0, 1/2 at recall 0, 1 -> AP 1/2.
    truth = {("v", 902): gt((A, (1,)))}
    detections = {("v", 902): [det(A, 1, 0.8)], ("v", 950): [det(A, 1, 0.9)]}
    assert frame_map(truth, detections).mean_ap == 1.0
    truth[("v", 951)] = []
    detections[("v", 951)] = [det(A, 1, 0.9)]
    assert frame_map(truth, detections).mean_ap == 0.5


def test_excluded_keyframes_are_ignored():
    # 903's GT would be a miss and 904's detection a top-ranked FP; both are excluded.
    # Without: ranks FP (.99), TP (.5) over 2 GT -> precision 1/2 at recall 1/2 -> 1/4.
    truth = {("v", 902): gt((A, (1,))), ("v", 903): gt((B, (1,))), ("v", 904): []}
    detections = {("v", 902): [det(A, 1, 0.5)], ("v", 904): [det(B, 1, 0.99)]}
    assert frame_map(truth, detections).mean_ap == pytest.approx(0.5 * 0.5)
    result = frame_map(truth, detections, excluded={("v", 903), ("v", 904)})
    assert result.mean_ap == 1.0
    assert result.num_ground_truth == {1: 1}


def test_only_label_map_classes_with_ground_truth_are_averaged():
    # Classes 1, 2, 3 are evaluated; 3 has no GT (not averaged, even with detections);
    # 9 is outside the label map (its GT and detections are ignored).
    label_map = LabelMap((Label(1, "one"), Label(2, "two"), Label(3, "three")))
    truth = {("v", 902): gt((A, (1, 9)), (B, (2,)))}
    detections = {
        ("v", 902): [det(A, 1, 0.9), det(A, 3, 0.95), det(B, 9, 0.1)],  # class 2 missed
    }
    result = frame_map(truth, detections, label_map=label_map)
    assert result.per_class == {1: 1.0, 2: 0.0}
    assert result.mean_ap == 0.5
    assert result.by_name(label_map) == {"one": 1.0, "two": 0.0}
    assert frame_map(truth, detections, label_map=[1]).per_class == {1: 1.0}
    assert frame_map(truth, detections).per_class == {1: 1.0, 2: 0.0, 9: 0.0}


def test_every_ground_truth_row_is_an_instance():
    # The same row twice is two instances: one detection finds one -> recall 1/2 at
    # precision 1 -> AP 1/2 (collapsed into one instance it would be 1).
    detections = {("v", 902): [det(A, 1, 0.9)]}
    assert frame_map({("v", 902): gt((A, (1,)), (A, (1,)))}, detections).mean_ap == 0.5
    assert frame_map({("v", 902): [LabeledBox(A, (1, 1))]}, detections).mean_ap == 0.5


def test_top_50_per_keyframe_are_kept_after_leaving_out_classes_outside_the_label_map():
    # 50 detections of class 99 (not evaluated) outscore class 1's true positive: they
    # are dropped first, so the TP stays in the top 50 -> AP 1. 50 detections of
    # class 2 (evaluated, no GT) push it out of the top 50 -> class 1 AP 0.
    truth = {("v", 902): gt((A, (1,)))}
    crowd = [det(ELSEWHERE, 99, 0.9)] * 50
    assert frame_map(truth, {("v", 902): [*crowd, det(A, 1, 0.1)]}, label_map=[1, 2]).mean_ap == 1
    crowd = [det(ELSEWHERE, 2, 0.9)] * 50
    result = frame_map(truth, {("v", 902): [*crowd, det(A, 1, 0.1)]}, label_map=[1, 2])
    assert result.per_class == {1: 0.0}
    assert result.num_detections == {1: 0}


def heap_case(tp_class: int, fp_class: int) -> tuple[dict, dict]:
    """The TP first, 49 FPs of another class at its score (0.5), then one FP at 0.6."""
    truth = {("v", 902): gt((A, (tp_class,)))}
    found = [det(A, tp_class, 0.5), *[det(ELSEWHERE, fp_class, 0.5)] * 49]
    return truth, {("v", 902): [*found, det(ELSEWHERE, fp_class, 0.6)]}


def test_cap_drops_the_smallest_heap_entry_among_equal_scores():
    # The 51st detection (0.6) replaces the heap's smallest entry, the smallest
    # (score, action_id, y1, x1, y2, x2): with the TP of class 1 that is the TP (first
    # in the file though it is) -> AP 0; with the TP of class 2 it is a class-1 FP and
    # the TP stays -> AP 1.
    assert frame_map(*heap_case(tp_class=1, fp_class=2)).mean_ap == 0.0
    assert frame_map(*heap_case(tp_class=2, fp_class=1)).mean_ap == 1.0


def test_empty_detection_boxes_are_removed_after_the_cap():
    # A zero-area detection is removed, not a false positive: FP-free -> AP 1 (as a
    # FP ranked first it would be 1/2). 50 of them still fill the top 50 first -> 0.
    truth = {("v", 902): gt((A, (1,)))}
    flat = det(Box(0.2, 0.2, 0.2, 0.5), 1, 0.9)
    inverted = det(Box(0.4, 0.2, 0.1, 0.9), 1, 0.9)
    assert frame_map(truth, {("v", 902): [flat, inverted, det(A, 1, 0.5)]}).mean_ap == 1.0
    assert frame_map(truth, {("v", 902): [*[flat] * 50, det(A, 1, 0.5)]}).mean_ap == 0.0


def test_boxes_outside_the_unit_square_are_kept():
    outside = Box(-0.1, 0.0, 0.5, 1.2)
    truth = {("v", 902): gt((outside, (1,))), ("v", 903): gt((A, (1,)))}
    detections = {
        ("v", 902): [det(outside, 1, 0.9)],
        ("v", 903): [det(Box(0.1, 0.1, 0.4, 1.5), 1, 0.8)],
    }
    # Both TPs (the second: IoU .24/.42 = .57 with A) -> AP 1.
    assert frame_map(truth, detections).mean_ap == 1.0


def test_equal_scores_across_keyframes_rank_the_later_one_first():
    # One GT (at 902); a TP at 902 and a FP at 903 (a GT keyframe with no box), both
    # 0.5. Ranked by np.argsort(scores)[::-1], the one scored later comes first:
    # keyframes 903 then 902 -> TP first -> AP 1; 902 then 903 -> FP first -> AP 1/2.
    truth = {("v", 902): gt((A, (1,))), ("v", 903): []}
    tp, fp = [det(A, 1, 0.5)], [det(B, 1, 0.5)]
    assert frame_map(truth, {("v", 903): fp, ("v", 902): tp}).mean_ap == 1.0
    assert frame_map(truth, {("v", 902): tp, ("v", 903): fp}).mean_ap == 0.5


def test_equal_scores_in_a_keyframe_match_in_heap_order_and_rank_reversed():
    # d1 = A and d2 (A lowered to y1 .15: IoU .9375 with A), both 0.5, read d2 first.
    # The heap orders them by (score, action_id, y1, ...): d1 (y1 .1) first, so d1
    # takes A (TP) and d2 is a duplicate (FP). Ranked, the later (d2) comes first:
    # FP, TP -> precision 0, 1/2 at recall 0, 1 -> AP 1/2. (In file order, d2 would
    # take A and rank first: AP 1.)
    d2 = Box(0.1, 0.15, 0.4, 0.9)
    truth = {("v", 902): gt((A, (1,)))}
    assert frame_map(truth, {("v", 902): [det(d2, 1, 0.5), det(A, 1, 0.5)]}).mean_ap == 0.5


def test_no_ground_truth_to_evaluate_is_a_one_line_error():
    with pytest.raises(VidrayError, match="no ground-truth box"):
        frame_map({("v", 902): gt((A, (1,)))}, {}, excluded={("v", 902)})


def test_average_precision_edge_cases():
    assert average_precision([], [], 3) == 0.0
    assert average_precision([0.3, 0.2], [True, True], 2) == 1.0
    assert average_precision([0.3, 0.2], [True, True], 4) == 0.5
    # ranks TP, FP, FP, TP over 2 GT: 1/2 * 1 + 1/2 * 2/4
    assert average_precision([4, 3, 2, 1], [True, False, False, True], 2) == 0.75
    # equal scores: the later one ranks first
    assert average_precision([0.5, 0.5], [True, False], 1) == 0.5
    assert average_precision([0.5, 0.5], [False, True], 1) == 1.0
    assert box_iou(ELSEWHERE, A) == 0.0


# ------------------------------------------------ against a transcription of the official code
#
# ActivityNet's get_ava_performance.py (read_csv, run_evaluation) and the TF Object
# Detection API's per_image_evaluation / metrics, written out with their steps in
# their order, on CSV rows. Random cases with ties, caps, empty and out-of-range
# boxes, repeated rows, 2-column rows, classes outside the label map, exclusions.

CLASSES = (1, 2, 3, 4)  # the label map; rows also use 5, which is outside it


def official_read_csv(rows, class_whitelist, capacity):
    entries, all_keys = defaultdict(list), set()
    for row in rows:
        key = (row[0], int(row[1]))
        all_keys.add(key)
        if len(row) == 2:
            continue
        x1, y1, x2, y2 = (float(v) for v in row[2:6])
        action_id = int(row[6])
        if action_id not in class_whitelist:
            continue
        score = float(row[7]) if len(row) == 8 else 1.0
        if capacity < 1 or len(entries[key]) < capacity:
            heapq.heappush(entries[key], (score, action_id, y1, x1, y2, x2))
        elif score > entries[key][0][0]:
            heapq.heapreplace(entries[key], (score, action_id, y1, x1, y2, x2))
    ordered = {key: sorted(found, key=lambda t: -t[0]) for key, found in entries.items()}
    return ordered, all_keys


def official_iou(d, g):
    heights = np.maximum(
        0.0, np.minimum(d[:, None, 2], g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0])
    )
    widths = np.maximum(
        0.0, np.minimum(d[:, None, 3], g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1])
    )
    inter = heights * widths
    area_d = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_d[:, None] + area_g[None, :] - inter)


def official_tp_fp(boxes, gt_boxes):
    tp = np.zeros(len(boxes), bool)
    if gt_boxes.size == 0:
        return tp
    iou = official_iou(boxes, gt_boxes)
    best = np.argmax(iou, axis=1)
    detected = np.zeros(len(gt_boxes), bool)
    for i in range(len(boxes)):
        if iou[i, best[i]] >= 0.5 and not detected[best[i]]:
            tp[i] = detected[best[i]] = True
    return tp


def official_ap(scores, tp, num_gt):
    order = np.argsort(scores)[::-1]
    tp = tp.astype(int)[order]
    cum_tp, cum_fp = np.cumsum(tp), np.cumsum(1 - tp)
    precision = cum_tp.astype(float) / (cum_tp + cum_fp)
    recall = cum_tp.astype(float) / num_gt
    if not precision.size:
        return 0.0
    recall = np.concatenate([[0], recall, [1]])
    precision = np.concatenate([[0], precision, [0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = np.maximum(precision[i], precision[i + 1])
    steps = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def official_per_class_ap(gt_rows, det_rows, excluded):
    truth, included = official_read_csv(gt_rows, set(CLASSES), 0)
    included -= excluded
    num_gt = defaultdict(int)
    for key, entries in truth.items():
        if key not in excluded:
            for entry in entries:
                num_gt[entry[1]] += 1
    scores, tps = defaultdict(list), defaultdict(list)
    for key, entries in official_read_csv(det_rows, set(CLASSES), 50)[0].items():
        if key not in included:
            continue
        boxes = np.array([e[2:] for e in entries], float)
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        kept = [e for e, ok in zip(entries, valid, strict=True) if ok]
        gt_here = truth.get(key, [])
        for c in CLASSES:
            mine = [e for e in kept if e[1] == c]
            if mine:
                gt_boxes = np.array([e[2:] for e in gt_here if e[1] == c], float).reshape(-1, 4)
                scores[c].append(np.array([e[0] for e in mine], float))
                tps[c].append(official_tp_fp(np.array([e[2:] for e in mine], float), gt_boxes))
    return {
        c: official_ap(
            np.concatenate(scores[c]) if scores[c] else np.array([], float),
            np.concatenate(tps[c]) if tps[c] else np.array([], bool),
            num_gt[c],
        )
        for c in CLASSES
        if num_gt[c]
    }


def random_rows(rng):
    """(ground-truth rows, detection rows, excluded keys) of one random case."""
    grid = np.round(np.arange(-0.1, 1.11, 0.1), 2)  # coarse: equal IoUs and boxes happen

    def box():
        x1, x2, y1, y2 = (float(v) for v in grid[rng.integers(0, len(grid), 4)])
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        return [
            float(x1),
            float(y1),
            float(x2),
            float(y2),
        ]  # sometimes empty, sometimes outside [0, 1]

    keys = [(v, t) for v in ("a", "b") for t in range(902, 902 + int(rng.integers(1, 4)))]
    gt_rows, people = [], {}
    for video, t in keys:
        if rng.random() < 0.2:
            gt_rows.append([video, t])  # a keyframe with no box
        people[video, t] = [box() for _ in range(rng.integers(0, 4))]
        for b in people[video, t]:
            for action in rng.choice(5, rng.integers(1, 3), replace=False) + 1:
                gt_rows += [[video, t, *b, int(action), 0]] * int(rng.choice([1, 1, 1, 2]))
    det_rows = []
    for video, t in [*keys, ("c", 902)]:
        near = people.get((video, t), []) or [box()]
        for _ in range(rng.choice([0, 3, 10, 60])):
            b = near[rng.integers(len(near))] if rng.random() < 0.6 else box()
            det_rows.append(
                [video, t, *b, int(rng.integers(1, 6)), float(rng.choice([0.1, 0.5, 0.9]))]
            )
    excluded = {k for k in keys if rng.random() < 0.15}
    shuffled = [gt_rows[i] for i in rng.permutation(len(gt_rows))]
    return shuffled, [det_rows[i] for i in rng.permutation(len(det_rows))], excluded


def write_rows(path, rows):
    path.write_text(
        "".join(
            ",".join(repr(v) if isinstance(v, float) else str(v) for v in row) + "\n"
            for row in rows
        )
    )
    return path


def test_agrees_with_a_transcription_of_the_official_code_on_random_cases(tmp_path):
    label_map = write_label_map(tmp_path / "classes.pbtxt", [Label(c, f"c{c}") for c in CLASSES])
    rng = np.random.default_rng(2019)
    checked = 0
    for case in range(60):
        gt_rows, det_rows, excluded = random_rows(rng)
        expected = official_per_class_ap(gt_rows, det_rows, excluded)
        if not expected:
            continue
        result, _ = frame_map_of_files(
            label_map,
            write_rows(tmp_path / "gt.csv", gt_rows),
            write_rows(tmp_path / "det.csv", det_rows),
            write_excluded(tmp_path / "excluded.csv", excluded),
        )
        assert result.per_class == pytest.approx(expected, abs=1e-12), case
        checked += 1
    assert checked > 40


# ---------------------------------------------------------------- training's val/frame_map


class FixedScores(torch.nn.Module):
    """A detector whose logits per box are given: (clips, boxes) -> (boxes, classes)."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, clips: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(boxes)]


def test_validation_scores_the_top_50_per_keyframe_as_the_evaluator_does():
    # One keyframe, GT A of class 1; the head sees A and 25 boxes elsewhere, classes
    # (1, 2). Class 2 scores sigmoid(5) on every box; class 1 sigmoid(1) = .73 on the
    # 25 others and sigmoid(0) = .5 on A. 52 detections: the top 50 leave out the two
    # weakest, A's class-1 TP among them -> AP 0 (uncapped: 25 FPs, then the TP -> 1/26).
    boxes = [list(A), *[list(ELSEWHERE)] * 25]
    logits = [[0.0, 5.0], *[[1.0, 5.0]] * 25]
    batch = {
        "video_key": torch.tensor([0]),
        "keyframe_sec": torch.tensor([902]),
        "truth_boxes": torch.tensor([list(A)]),
        "truth_targets": torch.tensor([[1.0, 0.0]]),
        "truth_owner": torch.tensor([0]),
        "frames": torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8),
        "boxes": torch.zeros(len(boxes), 5),
        "normalised": torch.tensor(boxes),
        "owner": torch.zeros(len(boxes), dtype=torch.long),
    }
    found = TopDetections()
    truth = collect(
        FixedScores(logits), [batch], (1, 2), torch.device("cpu"), found, normalization=IMAGENET
    )
    assert truth == {(0, 902): [LabeledBox(Box(*np.float32(A).tolist()), (1,))]}
    assert [len(heap) for heap in found.heaps.values()] == [50]
    assert frame_map(truth, found).per_class == {1: 0.0}
