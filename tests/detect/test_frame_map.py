"""Frame-mAP at IoU 0.5 (the AVA protocol): hand-worked cases and a brute-force check."""

from __future__ import annotations

import pytest

from vidray.data.ava_files import Box, Detection, Label, LabeledBox, LabelMap, box_iou
from vidray.detect.frame_map import average_precision, frame_map
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


def test_voc_matching_takes_best_box_even_if_matched_greedy_takes_next():
    # G1 = x [0, .4], G2 = x [.1, .5] (full height). d1 = G1 (0.9) matches G1.
    # d2 = x [0, .42] (0.8): IoU .4/.42 = .95 with G1 (matched), .32/.5 = .64 with G2.
    # voc: d2's best box is taken -> FP; precision 1, 1/2 at recall 1/2 -> AP = 1/2.
    # greedy: d2 takes G2 -> TP -> AP = 1.
    g1, g2, d2 = Box(0.0, 0.0, 0.4, 1.0), Box(0.1, 0.0, 0.5, 1.0), Box(0.0, 0.0, 0.42, 1.0)
    truth = {("v", 902): gt((g1, (1,)), (g2, (1,)))}
    detections = {("v", 902): [det(g1, 1, 0.9), det(d2, 1, 0.8)]}
    assert frame_map(truth, detections).mean_ap == pytest.approx(0.5)
    assert frame_map(truth, detections, matching="greedy").mean_ap == 1.0


def test_detection_on_keyframe_without_ground_truth_is_a_false_positive():
    truth = {("v", 902): gt((A, (1,)))}
    detections = {("v", 902): [det(A, 1, 0.8)], ("v", 950): [det(A, 1, 0.9)]}
    assert frame_map(truth, detections).mean_ap == 0.5


def test_excluded_keyframes_are_ignored():
    # 903's GT would be a miss and 904's detection a top-ranked FP; both are excluded.
    truth = {("v", 902): gt((A, (1,))), ("v", 903): gt((B, (1,)))}
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


def test_top_detections_per_keyframe_cap():
    # Without a cap: FP (0.9) then TP (0.8) -> AP 1/2; keeping one per keyframe -> AP 0.
    truth = {("v", 902): gt((A, (1,)))}
    detections = {("v", 902): [det(B, 1, 0.9), det(A, 1, 0.8)]}
    assert frame_map(truth, detections).mean_ap == 0.5
    assert frame_map(truth, detections, max_detections_per_keyframe=1).mean_ap == 0.0


def test_no_ground_truth_to_evaluate_is_a_one_line_error():
    with pytest.raises(VidrayError, match="no ground-truth box"):
        frame_map({("v", 902): gt((A, (1,)))}, {}, excluded={("v", 902)})


def test_average_precision_edge_cases():
    assert average_precision([], [], 3) == 0.0
    assert average_precision([0.3, 0.2], [True, True], 2) == 1.0
    assert average_precision([0.3, 0.2], [True, True], 4) == 0.5
    # ranks TP, FP, FP, TP over 2 GT: 1/2 * 1 + 1/2 * 2/4
    assert average_precision([4, 3, 2, 1], [True, False, False, True], 2) == 0.75
    assert box_iou(ELSEWHERE, A) == 0.0


# ---------------------------------------------------------------- against brute force


def brute_iou(a: Box, b: Box) -> float:
    w = min(a.x2, b.x2) - max(a.x1, b.x1)
    h = min(a.y2, b.y2) - max(a.y1, b.y1)
    inter = max(w, 0) * max(h, 0)
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union


def brute_force_map(truth, detections, classes, excluded, greedy):
    """The protocol spelt out with plain loops; scores are distinct."""
    aps = {}
    for c in classes:
        gts = [
            (key, person.box)
            for key, people in truth.items()
            if key not in excluded
            for person in people
            if c in person.action_ids
        ]
        if not gts:
            continue
        ranked = sorted(
            (d.score, key, d.box)
            for key, dets in detections.items()
            if key not in excluded
            for d in dets
            if d.action_id == c
        )[::-1]
        used, tps = set(), []
        for _, key, box in ranked:
            best, best_iou = None, -1.0
            for j, (gt_key, gt_box) in enumerate(gts):
                if gt_key == key and not (greedy and j in used):
                    iou = brute_iou(box, gt_box)
                    if iou > best_iou:
                        best, best_iou = j, iou
            tp = best is not None and best_iou >= 0.5 and best not in used
            if tp:
                used.add(best)
            tps.append(tp)
        precisions = [sum(tps[: k + 1]) / (k + 1) for k in range(len(tps))]
        # Each TP adds 1/len(gts) recall at the best precision at or below its rank.
        aps[c] = sum(max(precisions[k:]) / len(gts) for k in range(len(tps)) if tps[k])
    return aps


def random_case(rng):
    def box():
        x1, y1 = rng.uniform(0, 0.7, 2)
        return Box(x1, y1, x1 + rng.uniform(0.05, 0.3), y1 + rng.uniform(0.05, 0.3))

    def near(b):  # a box around b (each edge moves by < 30 % of the short side)
        s = rng.uniform(0, 0.3) * min(b.x2 - b.x1, b.y2 - b.y1)
        return Box(*(v + rng.uniform(-s, s) for v in b))

    def people():  # 0-3 people, some overlapping (where voc and greedy matching differ)
        boxes = [box()]
        for _ in range(3):
            boxes.append(near(boxes[-1]) if rng.random() < 0.5 else box())
        count = int(rng.integers(0, 4))
        return gt(
            *(
                (b, tuple(rng.choice(4, rng.integers(1, 3), replace=False) + 1))
                for b in boxes[:count]
            )
        )

    keys = [("v", t) for t in range(902, 902 + int(rng.integers(1, 6)))]
    truth = {key: people() for key in keys}
    detections = {}
    for key in [*keys, ("w", 902)]:
        dets = []
        for person in truth.get(key, []):
            for _ in range(rng.integers(0, 3)):
                dets.append((near(person.box), int(rng.integers(1, 5))))
        dets += [(box(), int(rng.integers(1, 5))) for _ in range(rng.integers(0, 3))]
        detections[key] = dets
    scores = iter(rng.permutation(sum(len(d) for d in detections.values())) / 100)
    detections = {
        key: [det(b, c, float(next(scores))) for b, c in dets] for key, dets in detections.items()
    }
    excluded = {key for key in keys if rng.random() < 0.2}
    return truth, detections, excluded


@pytest.mark.parametrize("matching", ["voc", "greedy"])
def test_matches_brute_force_reference_on_random_cases(matching):
    import numpy as np

    rng = np.random.default_rng(12345)
    checked = 0
    for _ in range(300):
        truth, detections, excluded = random_case(rng)
        expected = brute_force_map(truth, detections, (1, 2, 3), excluded, matching == "greedy")
        if not expected:
            continue
        result = frame_map(
            truth, detections, label_map=[1, 2, 3], excluded=excluded, matching=matching
        )
        assert result.per_class == pytest.approx(expected)
        assert result.mean_ap == pytest.approx(sum(expected.values()) / len(expected))
        checked += 1
    assert checked > 200
