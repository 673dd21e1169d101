"""Tests of cropmap.core.layout: the names of the data root's files."""

from cropmap.core import layout


def test_layout_names():
    assert layout.label_path("d/image_1.png").as_posix() == "d/image_1_label.png"
    assert layout.label_path("d/scene.tif").as_posix() == "d/scene_label.tif"
    assert layout.source_path("root", "src", "image_1").as_posix() == "root/src/image_1.png"
    assert layout.source_path("root", "src", "x/a.png").as_posix() == "x/a.png"
    m = layout.map_path("out", "image_3", "unet")
    assert m.as_posix() == "out/image_3_predict_unet.png"
    assert [p.name for p in layout.prob_paths(m, 2)] == ["image_3_predict_unet_prob0.png", "image_3_predict_unet_prob1.png"]
    assert layout.preview_path(m).name == "image_3_predict_unet_preview.png"
    assert layout.is_derived(layout.preview_path(m)) and layout.is_derived(layout.prob_paths(m, 1)[0])
    assert not layout.is_derived(m) and not layout.is_derived("out/image_3_predict_problem.png")
    assert layout.checkpoint_path("m", {"model": "unet", "backbone": "resnet34", "exp": "e"}, "best").as_posix() \
        == "m/unet_resnet34_e_best.pth"
