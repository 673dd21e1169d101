"""Tests of losses/: focal and Lovasz-softmax against their definitions, the criterion, edge-aware label
smoothing, and losses on batches that miss a class."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses import (
    LOSSES,
    CrossEntropyLoss,
    FocalLoss,
    LovaszSoftmax,
    build_loss,
    edge_smoothing_targets,
    focal_loss,
    lovasz_softmax,
)
from cropmap.raster import IGNORE


def _batch(seed=0, shape=(2, 4, 5, 6), ignore_fraction=0.25, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    logits = torch.randn(shape, generator=g, dtype=dtype)
    labels = torch.randint(0, c, (b, h, w), generator=g)
    labels[torch.rand((b, h, w), generator=g) < ignore_fraction] = 255
    return logits, labels


# ----------------------------------------------------------------------------- focal


def test_focal_gamma0_equals_cross_entropy():
    logits, labels = _batch()
    expected = F.cross_entropy(logits, labels, ignore_index=255)
    torch.testing.assert_close(focal_loss(logits, labels, gamma=0.0), expected)
    torch.testing.assert_close(CrossEntropyLoss()(logits, labels), expected)


def test_focal_hand_computed_two_pixels():
    # pixel A: logits (0, 0), label 0 -> p_t = 1/2; pixel B: logits (ln 3, 0), label 0 -> p_t = 3/4.
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # [1, 2, 1, 2]
    labels = torch.tensor([[[0, 0]]])
    expected = ((1 - 0.5) ** 2 * math.log(2.0) + (1 - 0.75) ** 2 * math.log(4 / 3)) / 2
    assert focal_loss(logits, labels, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)
    # gamma = 1 on the same pixels
    expected1 = (0.5 * math.log(2.0) + 0.25 * math.log(4 / 3)) / 2
    assert focal_loss(logits, labels, gamma=1.0).item() == pytest.approx(expected1, rel=1e-6)


def test_focal_alpha_weights_per_class():
    # pixel A: label 0, p_t = 1/2, alpha 0.25; pixel B: label 1, p_t = 1/4, alpha 0.75; plain mean over 2.
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])
    labels = torch.tensor([[[0, 1]]])
    expected = (0.25 * 0.5**2 * math.log(2.0) + 0.75 * 0.75**2 * math.log(4.0)) / 2
    assert focal_loss(logits, labels, gamma=2.0, alpha=[0.25, 0.75]).item() == pytest.approx(expected, rel=1e-6)
    assert FocalLoss(gamma=2.0, alpha=[0.25, 0.75])(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(logits, labels, alpha=[1.0, 1.0, 1.0])


def test_focal_ignores_255_pixels_in_the_mean():
    logits = torch.tensor([[[[0.0, 5.0]], [[0.0, -5.0]]]])
    labels = torch.tensor([[[0, 255]]])
    assert focal_loss(logits, labels, gamma=2.0).item() == pytest.approx(0.25 * math.log(2.0), rel=1e-6)


# ----------------------------------------------------------------------------- Lovasz


def _one_hot_probas(pred, num_classes):
    return F.one_hot(pred, num_classes).permute(0, 3, 1, 2).to(torch.float64)


def _mean_jaccard_loss(pred, labels, classes, ignore=255):
    """1 - IoU averaged over `classes`, on valid pixels (independent numpy computation)."""
    pred, labels = pred.numpy(), labels.numpy()
    valid = labels != ignore
    losses = []
    for c in classes:
        p, t = (pred == c) & valid, (labels == c) & valid
        union = (p | t).sum()
        losses.append(1.0 - (p & t).sum() / union if union else 0.0)
    return float(np.mean(losses))


def test_lovasz_on_one_hot_equals_one_minus_mean_jaccard_of_present_classes():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (2, 6, 7), generator=g)  # class 3 never present in labels
    labels[torch.rand(labels.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, 4, labels.shape, generator=g)  # ... but predicted
    probas = _one_hot_probas(pred, 4)
    present = sorted(set(labels[labels != 255].tolist()))
    assert present == [0, 1, 2]
    expected = _mean_jaccard_loss(pred, labels, present)
    assert lovasz_softmax(probas, labels).item() == pytest.approx(expected, abs=1e-12)
    # classes="all" adds class 3 with IoU 0 (predicted, never labelled)
    assert lovasz_softmax(probas, labels, classes="all").item() == pytest.approx(
        _mean_jaccard_loss(pred, labels, [0, 1, 2, 3]), abs=1e-12
    )
    # per_image: mean over images of each image's mean over its own present classes
    per_image = [
        _mean_jaccard_loss(pred[i], labels[i], sorted(set(labels[i][labels[i] != 255].tolist()))) for i in range(2)
    ]
    assert lovasz_softmax(probas, labels, per_image=True).item() == pytest.approx(np.mean(per_image), abs=1e-12)
    assert lovasz_softmax(probas, labels, classes=[1]).item() == pytest.approx(
        _mean_jaccard_loss(pred, labels, [1]), abs=1e-12
    )


def _choquet_jaccard(errors, is_class):
    """Lovasz extension via its integral form: sum over thresholds of Delta({i: m_i >= t}) dt."""
    order = np.argsort(-errors, kind="stable")
    values = np.append(errors[order], 0.0)
    total = 0.0
    for k in range(1, len(errors) + 1):
        chosen = set(order[:k].tolist())
        positives = set(np.flatnonzero(is_class).tolist())
        delta = len(chosen) / len(positives | chosen)  # |M| / |{y=c} U M|
        total += (values[k - 1] - values[k]) * delta
    return total


def test_lovasz_soft_probabilities_match_integral_definition():
    g = torch.Generator().manual_seed(2)
    probas = torch.softmax(torch.randn(1, 3, 3, 4, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([[[0, 1, 2, 0], [1, 1, 0, 2], [2, 0, 255, 1]]])
    valid = (labels != 255).reshape(-1).numpy()
    flat_p = probas.permute(0, 2, 3, 1).reshape(-1, 3).numpy()[valid]
    flat_y = labels.reshape(-1).numpy()[valid]
    expected = np.mean(
        [_choquet_jaccard(np.abs((flat_y == c).astype(float) - flat_p[:, c]), flat_y == c) for c in range(3)]
    )
    assert lovasz_softmax(probas, labels).item() == pytest.approx(expected, abs=1e-12)


def test_lovasz_one_pixel_is_one_minus_probability_of_its_class():
    logits = torch.tensor([[[[0.3]], [[-1.0]], [[2.0]], [[0.0]]]], requires_grad=True)  # [1, 4, 1, 1]
    labels = torch.tensor([[[2]]])
    loss = LovaszSoftmax()(logits, labels)
    assert loss.item() == pytest.approx(1.0 - torch.softmax(logits, 1)[0, 2, 0, 0].item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    for name in LOSSES:  # every criterion works on a single pixel
        assert torch.isfinite(build_loss(name)(logits, labels))


def test_zero_loss_on_perfect_prediction():
    labels = torch.tensor([[[0, 1, 255], [2, 3, 1]]])
    safe = labels.clamp(max=3)
    probas = _one_hot_probas(safe, 4)
    assert lovasz_softmax(probas, labels).item() == 0.0
    logits = (probas * 200.0 - 100.0).float()  # +100 on the true class, -100 elsewhere
    assert focal_loss(logits, labels).item() == 0.0
    assert LovaszSoftmax()(logits, labels).item() == 0.0
    assert build_loss("focal+lovasz")(logits, labels).item() == 0.0


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_get_exactly_zero_gradient(name):
    logits, labels = _batch(3, ignore_fraction=0.3)
    logits.requires_grad_(True)
    build_loss(name)({"out": logits, "aux": logits * 0.5}, labels).backward()
    ignored = (labels == 255).unsqueeze(1).expand_as(logits)
    assert ignored.any() and (~ignored).any()
    assert torch.equal(logits.grad[ignored], torch.zeros_like(logits.grad[ignored]))
    assert logits.grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_batch_gives_connected_zero_loss(name):
    logits, _ = _batch(4)
    logits.requires_grad_(True)
    labels = torch.full((2, 5, 6), 255)
    loss = build_loss(name)({"out": logits, "aux": logits}, labels)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradcheck_focal_float64():
    logits, labels = _batch(5, shape=(1, 3, 3, 3), dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, labels, gamma=2.0, alpha=[0.2, 0.5, 0.3]), (logits,))
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, labels, gamma=0.5), (logits,))


def test_gradcheck_lovasz_float64():
    g = torch.Generator().manual_seed(6)
    probas = torch.softmax(torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    labels = torch.randint(0, 3, (2, 3, 3), generator=g)
    labels[0, 0, 0] = 255
    assert torch.autograd.gradcheck(lambda p: lovasz_softmax(p, labels), (probas,))
    assert torch.autograd.gradcheck(lambda p: lovasz_softmax(p, labels, classes="all", per_image=True), (probas,))
    logits = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: build_loss("focal+lovasz")({"out": x, "aux": 2 * x}, labels), (logits,))


# ----------------------------------------------------------------------------- criterion


@pytest.mark.parametrize("name", LOSSES)
def test_build_loss_adds_weighted_aux(name):
    out, labels = _batch(7)
    aux, _ = _batch(8)
    single = {
        "ce": lambda x: F.cross_entropy(x, labels, ignore_index=255),
        "focal": lambda x: focal_loss(x, labels, gamma=2.0),
        "lovasz": lambda x: lovasz_softmax(torch.softmax(x, 1), labels),
        "focal+lovasz": lambda x: focal_loss(x, labels) + lovasz_softmax(torch.softmax(x, 1), labels),
    }[name]
    criterion = build_loss(name, aux_weight=0.1)
    torch.testing.assert_close(criterion(out, labels), single(out))
    torch.testing.assert_close(criterion({"out": out}, labels), single(out))
    torch.testing.assert_close(criterion({"out": out, "aux": aux}, labels), single(out) + 0.1 * single(aux))
    assert build_loss(name).aux_weight == 0.2


def test_build_loss_gamma_and_errors():
    out, labels = _batch(9)
    torch.testing.assert_close(build_loss("focal", gamma=0.0)(out, labels), F.cross_entropy(out, labels, ignore_index=255))
    with pytest.raises(ValueError, match="focal\\+lovasz"):
        build_loss("dice")
    with pytest.raises(ValueError, match="target"):
        build_loss("ce")(out, labels[:, :4])


# ---- edge-aware label smoothing -----------------------------------------------------------------


def test_edge_smoothing_targets_hand_made_label():
    # two classes side by side: columns 0..7 class 0, 8..14 class 2; one ignored pixel
    t = torch.zeros(1, 15, 15, dtype=torch.long)
    t[:, :, 8:] = 2
    t[0, 3, 0] = IGNORE
    q, valid = edge_smoothing_targets(t, 4, window=11, cap=0.2)
    assert q.shape == (1, 4, 15, 15)
    row = q[0, :, 7]  # middle row: windows span every row of the image (the ignored pixel, in column 0, not counted)
    # column 0: the 11x11 window covers columns 0..5, all class 0 -> one-hot
    assert torch.allclose(row[:, 0], torch.tensor([1.0, 0, 0, 0]))
    # column 3: columns 0..8 -> 1 of 9 columns is class 2 (the ignored pixel sits in column 0, class 0 side)
    share = 11 / (11 * 9 - 1)
    assert torch.allclose(row[:, 3], torch.tensor([1 - share, 0, share, 0]), atol=1e-6)
    # column 7, next to the border: columns 2..12, 5 of 11 are class 2 -> capped at 0.2
    assert torch.allclose(row[:, 7], torch.tensor([0.8, 0, 0.2, 0]), atol=1e-6)
    # column 8: the same on the other side
    assert torch.allclose(row[:, 8], torch.tensor([0.2, 0, 0.8, 0]), atol=1e-6)
    assert not valid[0, 3, 0] and torch.all(q[0, :, 3, 0] == 0)
    assert torch.allclose(q.sum(1)[valid], torch.ones(int(valid.sum())))


def test_edge_smoothing_spreads_over_the_classes_present():
    t = torch.zeros(1, 11, 11, dtype=torch.long)
    t[0, :, 8:] = 1
    t[0, 8:, :] = 3  # a corner where three classes meet
    q, _ = edge_smoothing_targets(t, 4, window=11, cap=0.5)
    centre = q[0, :, 5, 5]  # window = the whole image: 121 pixels
    counts = torch.tensor([float((t == c).sum()) for c in range(4)])
    share_other = 1 - counts[0] / 121
    assert share_other < 0.5  # under the cap: the target is the window's histogram
    assert torch.allclose(centre, counts / 121, atol=1e-6)


def test_edge_smoothed_ce_equals_ce_inside_parcels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 20, 20)
    t = torch.full((2, 20, 20), 2, dtype=torch.long)  # one class everywhere: no border, no smoothing
    t[1, :3] = IGNORE
    smooth = build_loss("ce", aux_weight=0, label_smoothing="edge")(logits, t)
    plain = build_loss("ce", aux_weight=0)(logits, t)
    assert torch.allclose(smooth, plain, atol=1e-6)
    focal_s = build_loss("focal", aux_weight=0, label_smoothing="edge")(logits, t)
    focal = build_loss("focal", aux_weight=0)(logits, t)
    assert torch.allclose(focal_s, focal, atol=1e-6)


def test_edge_smoothing_rewards_soft_borders():
    t = torch.zeros(1, 16, 16, dtype=torch.long)
    t[0, :, 8:] = 1
    q, _ = edge_smoothing_targets(t, 2)
    loss = build_loss("ce", aux_weight=0, label_smoothing="edge")
    confident = torch.where(t[:, None] == torch.arange(2)[None, :, None, None], 8.0, -8.0)
    soft = torch.log(q.clamp_min(1e-4))  # logits whose softmax is the target itself
    assert loss(soft, t) < loss(confident, t)  # over-confidence at the border costs more than matching q


def test_lovasz_alone_cannot_be_smoothed():
    with pytest.raises(ValueError, match="lovasz alone"):
        build_loss("lovasz", label_smoothing="edge")


# ---- classes missing from a batch -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["ce", "focal", "lovasz", "focal+lovasz"])
@pytest.mark.parametrize("smoothing", ["none", "edge"])
def test_losses_finite_when_a_class_is_missing(name, smoothing):
    if name == "lovasz" and smoothing == "edge":
        pytest.skip("not a valid combination")
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 24, 24, requires_grad=True)
    t = torch.randint(0, 3, (2, 24, 24))  # class 3 never appears
    t[0, :4] = IGNORE
    loss = build_loss(name, aux_weight=0.2, label_smoothing=smoothing)({"out": logits, "aux": logits}, t)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert torch.isfinite(logits.grad).all()
    # and a batch of ignored pixels only
    empty = build_loss(name, aux_weight=0.2, label_smoothing=smoothing)(logits, torch.full((2, 24, 24), IGNORE))
    assert empty.item() == 0.0
