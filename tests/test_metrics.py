"""Tests of cropmap.core.metrics: confusion-matrix IoU as the contract defines it, and classes absent from the
labels reported as such."""

import math

import numpy as np
import pytest
import torch

import cropmap.core.metrics as metrics
from cropmap.core.metrics import CLASS_NAMES, ConfusionMatrix, class_names, exclude_absent, iou_from_confusion

# 10 pixels; the last has label 255 (ignored) and a prediction that must not be counted.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 255])
PREDS = np.array([0, 0, 1, 1, 2, 2, 2, 0, 3, 3])
# Rows = label, cols = prediction, worked out by hand from the pairs above.
EXPECTED_CONFUSION = [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 1]]
# IoU_c = TP / (TP + FP + FN): class 0: 2/(2+1+1); 1: 1/(1+1+1); 2: 2/(2+1+1); 3: 1/1.
EXPECTED_IOU = [0.5, 1 / 3, 0.5, 1.0]


def test_class_names():
    assert CLASS_NAMES == ("other", "tobacco", "corn", "coix")


def test_hand_made_confusion_and_ious():
    cm = ConfusionMatrix(4)
    cm.update(PREDS.reshape(2, 5), LABELS.reshape(2, 5))
    result = cm.compute()
    assert result["confusion"] == EXPECTED_CONFUSION
    assert result["iou"] == pytest.approx(EXPECTED_IOU)
    assert result["mIoU"] == pytest.approx((1 / 3 + 0.5 + 1.0) / 3)  # crops only: classes 1..3
    assert result["mIoU_all"] == pytest.approx((0.5 + 1 / 3 + 0.5 + 1.0) / 4)
    assert result["pixel_acc"] == pytest.approx(6 / 9)  # 255 pixel not counted


def test_valid_mask_excludes_pixels_and_undefined_class_is_nan():
    valid = np.ones(10, dtype=bool)
    valid[8] = False  # the only class-3 pixel (label 3, pred 3): class 3 now absent from both
    cm = ConfusionMatrix(4)
    cm.update(PREDS, LABELS, valid)
    result = cm.compute()
    assert result["confusion"][3] == [0, 0, 0, 0]
    assert [row[3] for row in result["confusion"]] == [0, 0, 0, 0]
    assert math.isnan(result["iou"][3])
    assert result["iou"][:3] == pytest.approx(EXPECTED_IOU[:3])
    assert result["mIoU"] == pytest.approx((1 / 3 + 0.5) / 2)  # nanmean over defined crops
    assert result["mIoU_all"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)


def test_predicted_but_absent_class_has_iou_zero_not_nan():
    cm = ConfusionMatrix(4)
    cm.update(np.array([1, 1]), np.array([0, 0]))  # class 1 predicted, never labelled
    iou = cm.compute()["iou"]
    assert iou[0] == 0.0 and iou[1] == 0.0
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert cm.compute()["mIoU"] == 0.0


def test_empty_matrix_gives_nan_means():
    result = ConfusionMatrix(4).compute()
    assert all(math.isnan(v) for v in result["iou"])
    assert math.isnan(result["mIoU"]) and math.isnan(result["mIoU_all"]) and math.isnan(result["pixel_acc"])


def test_prediction_at_ignored_pixel_is_not_checked_or_counted():
    cm = ConfusionMatrix(4)
    cm.update(np.array([255, 2]), np.array([255, 2]))  # no-data code in the prediction map too
    assert cm.compute()["confusion"][2][2] == 1
    assert int(cm.matrix.sum()) == 1


@pytest.mark.parametrize("to", [np.asarray, torch.as_tensor])
def test_invalid_values_raise(to):
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match="prediction value 4"):
        cm.update(to(np.array([0, 4])), to(np.array([0, 1])))
    with pytest.raises(ValueError, match="label value 7"):
        cm.update(to(np.array([0, 1])), to(np.array([0, 7])))
    with pytest.raises(ValueError, match="same shape"):
        cm.update(to(np.array([0, 1])), to(np.array([0, 1, 2])))
    with pytest.raises(ValueError, match="integer"):
        cm.update(to(np.array([0.0, 1.0])), to(np.array([0, 1])))
    assert int(cm.matrix.sum()) == 0  # nothing was counted by the failed updates


def _random_maps(seed, shape=(3, 17, 23)):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=shape).astype(np.uint8)
    labels[rng.random(shape) < 0.2] = 255
    preds = rng.integers(0, 4, size=shape).astype(np.uint8)
    valid = rng.random(shape) > 0.1
    return preds, labels, valid


def _reference_confusion(preds, labels, valid):
    """Independent per-pixel count (slow, tests only)."""
    m = np.zeros((4, 4), dtype=np.int64)
    for p, t, v in zip(preds.ravel(), labels.ravel(), valid.ravel()):
        if v and t != 255:
            m[t, p] += 1
    return m


def test_torch_and_numpy_paths_agree_with_reference():
    preds, labels, valid = _random_maps(0)
    expected = _reference_confusion(preds, labels, valid)
    cm_np = ConfusionMatrix(4)
    cm_np.update(preds, labels, valid)
    cm_torch = ConfusionMatrix(4)
    cm_torch.update(torch.from_numpy(preds).long(), torch.from_numpy(labels).long(), torch.from_numpy(valid))
    assert cm_np.matrix.dtype == torch.int64 and cm_torch.matrix.dtype == torch.int64
    np.testing.assert_array_equal(cm_np.matrix.numpy(), expected)
    np.testing.assert_array_equal(cm_torch.matrix.numpy(), expected)
    r_np, r_torch = cm_np.compute(), cm_torch.compute()
    assert r_np["confusion"] == r_torch["confusion"] == expected.tolist()
    np.testing.assert_allclose(r_np["iou"], r_torch["iou"], equal_nan=True)
    np.testing.assert_allclose(r_np["iou"], iou_from_confusion(expected)[0], equal_nan=True)


def test_accumulation_over_updates_equals_one_update(monkeypatch):
    preds, labels, valid = _random_maps(1)
    whole = ConfusionMatrix(4)
    whole.update(preds, labels, valid)
    # Stream the same pixels in three pieces, with a tiny chunk size to exercise chunking.
    monkeypatch.setattr(metrics, "CHUNK", 7)
    pieces = ConfusionMatrix(4)
    for sl in (slice(0, 1), slice(1, 2), slice(2, 3)):
        pieces.update(torch.from_numpy(preds[sl]), torch.from_numpy(labels[sl]), torch.from_numpy(valid[sl]))
    assert torch.equal(whole.matrix, pieces.matrix)
    assert whole.matrix.sum() == (valid & (labels != 255)).sum()


def test_merge_iadd_reset():
    preds, labels, valid = _random_maps(2)
    a, b, both = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(preds[:1], labels[:1], valid[:1])
    b.update(preds[1:], labels[1:], valid[1:])
    both.update(preds, labels, valid)
    a += b
    assert torch.equal(a.matrix, both.matrix)
    a.reset()
    assert int(a.matrix.sum()) == 0
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(3))


def _all_reduce_worker(rank: int, world_size: int, store: str, out: str) -> None:
    """One of ``world_size`` gloo processes: counts its share of the images, then sums over processes."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        preds, labels, valid = _random_maps(3)
        cm = ConfusionMatrix(4)
        cm.update(preds[rank::world_size], labels[rank::world_size], valid[rank::world_size])
        torch.save(cm.all_reduce().matrix, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_two_processes(tmp_path):
    """Two gloo processes each count part of the images; after all_reduce both hold the whole count."""
    import torch.multiprocessing as mp

    preds, labels, valid = _random_maps(3)
    cm = ConfusionMatrix(4)
    cm.update(preds, labels, valid)
    before = cm.matrix.clone()
    assert torch.equal(cm.all_reduce().matrix, before)  # not initialised: no-op
    expected = torch.as_tensor(_reference_confusion(preds, labels, valid))
    out = str(tmp_path / "cm")
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert torch.equal(got, expected), (rank, got, expected)


def test_iou_from_confusion_function():
    iou, miou, miou_all = iou_from_confusion(np.array(EXPECTED_CONFUSION))
    assert iou == pytest.approx(EXPECTED_IOU)
    assert miou == pytest.approx((1 / 3 + 0.5 + 1.0) / 3)
    assert miou_all == pytest.approx(np.mean(EXPECTED_IOU))


def test_table_lists_classes_and_means():
    cm = ConfusionMatrix(4)
    valid = np.ones(10, dtype=bool)
    valid[8] = False
    cm.update(PREDS, LABELS, valid)
    text = cm.table()
    lines = text.splitlines()
    assert "1 tobacco" in lines[2] and "0.3333" in lines[2]
    assert "3 coix" in lines[4] and "absent" in lines[4]  # no coix pixel in the labels: not measurable, not 0
    assert lines[-3].startswith("mIoU (1..3)") and f"{(1 / 3 + 0.5) / 2:.4f}" in lines[-3]
    assert lines[-2].startswith("mIoU_all (0..3)") and f"{(0.5 + 1 / 3 + 0.5) / 3:.4f}" in lines[-2]
    assert lines[-1].startswith("absent: coix")
    assert "0 class0" in ConfusionMatrix(3).table() and class_names(3) == ["class0", "class1", "class2"]


# ---- classes missing from the validation set ----------------------------------------------------


def test_absent_class_is_reported_not_zero():
    cm = ConfusionMatrix(4)
    label = np.array([0, 0, 1, 1, 2, 2], np.uint8)
    pred = np.array([0, 3, 1, 1, 2, 2], np.uint8)  # class 3 predicted once, absent from the labels
    cm.update(pred, label)
    res = cm.compute()
    assert res["absent"] == [3]
    assert res["iou"][3] == 0.0  # the contract's metric: a false positive of an absent class
    table = cm.table()
    assert "absent" in table.splitlines()[4] and "0.0000" not in table.splitlines()[4]
    assert "absent: coix" in table
    kept = exclude_absent(res)
    assert math.isnan(kept["iou"][3]) and kept["mIoU"] == pytest.approx(np.mean(res["iou"][1:3]))
