"""cropmap.raster.preview: the legend under every picture, the error view against a label, streamed from disk."""

import numpy as np

from cropmap.core.classes import PALETTE
from cropmap.raster import read_png, write_png
from cropmap.raster.preview import MISSED, PreviewCanvas, legend, preview_picture, write_map_preview


def test_error_view_colours_each_pixel_by_what_went_wrong():
    c = PreviewCanvas(2, 4, max_side=4)
    c.add_image(0, 0, np.full((2, 4, 3), 100, np.uint8))
    c.add_labels(0, np.array([[0, 1, 1, 2], [0, 0, 2, 2]], np.uint8))
    c.add_truth(0, np.array([[0, 1, 0, 1], [2, 255, 2, 2]], np.uint8))
    e = c.render_errors()
    assert (e[0, 0] == 60).all() and (e[0, 1] == 60).all()  # correct: the darkened grey image
    assert (e[0, 2] == PALETTE[1]).all() and (e[0, 3] == PALETTE[2]).all()  # wrong: the predicted class's colour
    assert (e[1, 0] == MISSED).all()  # a crop predicted as class 0
    assert (e[1, 1] == 0).all()  # no data


def test_legend_lists_every_entry_and_wraps():
    wide = legend([("other", None), ("field", PALETTE[1])], 400)
    narrow = legend([(f"class{i}", PALETTE[i % 6]) for i in range(12)], 120)
    assert wide.shape[1] == 400 and narrow.shape[0] > 3 * wide.shape[0]  # wrapped onto several lines
    assert (wide == PALETTE[1]).all(-1).any()  # the colour box is drawn


def test_picture_of_a_map_and_its_errors_from_disk(tmp_path):
    h, w = 60, 90
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 150, 255
    rgba[:10, :10, 3] = 0  # no data
    label = np.zeros((h, w), np.uint8)
    label[:, 45:] = 1
    pred = label.copy()
    pred[30:, 45:] = 0  # half the field missed
    for name, a in (("src", rgba), ("label", label), ("map", pred)):
        write_png(tmp_path / f"{name}.png", a)
    write_map_preview(tmp_path / "map.png", tmp_path / "src.png", tmp_path / "p.png", ["other", "field"],
                      tmp_path / "label.png")
    pic = read_png(tmp_path / "p.png")
    assert pic.shape[1] == 2 * w + 8 and pic.shape[0] > h  # map | gap | errors, legends below
    errors = pic[:h, w + 8:]
    assert (errors[40:, 60] == MISSED).all() and (errors[5, 5] == 0).all()
    write_map_preview(tmp_path / "map.png", tmp_path / "src.png", tmp_path / "q.png", ["other", "field"])
    assert read_png(tmp_path / "q.png").shape[1] == w  # no label: the map alone
    canvas = PreviewCanvas(h, w)
    assert preview_picture(canvas, ["other", "field"]).shape[0] > h
