"""Tests of models/: registry, shapes, forward/backward, dilation, parameter counts, pretrained loading."""

import pytest
import torch
import torchvision
from torch import nn

import models
from models import BACKBONES, MODELS, SCSE, build_model, dilate_resnet_, list_backbones
from models.unet import UNetResNet, Unet34_scSE_hyper


def _forward_backward(model, x):
    """Run forward, check the output dict, backprop out + aux, check every parameter got a gradient."""
    out = model(x)
    assert set(out) == {"out", "aux"}
    b, _, h, w = x.shape
    for key in ("out", "aux"):
        assert out[key].shape == (b, 4, h, w) and out[key].dtype == torch.float32
        assert torch.isfinite(out[key]).all()
    (out["out"].square().mean() + out["aux"].square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    return out


# ----------------------------------------------------------------------------- registry


def test_registry_names():
    assert set(MODELS) == {"deeplabv3", "unet"}
    assert list_backbones("deeplabv3") == BACKBONES["deeplabv3"] == ("resnet18", "resnet34", "resnet50", "resnet101")
    assert list_backbones("unet") == ("resnet34", "resnet50")


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="deeplabv3, unet"):
        build_model("pspnet", "resnet34")
    with pytest.raises(ValueError, match="resnet34, resnet50"):
        build_model("unet", "resnet18")
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, resnet101"):
        build_model("deeplabv3", "vgg16")
    with pytest.raises(ValueError, match=r"\(8, 16\)"):
        build_model("deeplabv3", "resnet18", output_stride=32)
    with pytest.raises(ValueError, match="deeplabv3, unet"):
        list_backbones("fcn")


# ----------------------------------------------------------------------------- light models


@pytest.mark.parametrize(("backbone", "output_stride"), [("resnet18", 8), ("resnet18", 16), ("resnet34", 16)])
def test_deeplabv3_light_forward_backward_and_output_stride(backbone, output_stride):
    torch.manual_seed(0)
    model = build_model("deeplabv3", backbone, num_classes=4, output_stride=output_stride).eval()
    x = torch.randn(1, 3, 64, 64)
    _forward_backward(model, x)
    with torch.no_grad():
        features = model.backbone(x)
    # layer4 (and layer3, dilated at stride 8 too or strided to 16) end at the output stride
    assert features["out"].shape[-2:] == (64 // output_stride,) * 2
    assert features["aux"].shape[-2:] == (64 // output_stride,) * 2


def test_deeplabv3_train_mode_batch_two():
    torch.manual_seed(0)
    model = build_model("deeplabv3", "resnet18", output_stride=16).train()
    _forward_backward(model, torch.randn(2, 3, 64, 64))


def test_deeplabv3_448_input_and_no_aux():
    torch.manual_seed(0)
    model = build_model("deeplabv3", "resnet18", output_stride=16, aux=False).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 448, 448))
    assert set(out) == {"out"} and out["out"].shape == (1, 4, 448, 448)


def test_unet_resnet34_forward_backward_train_mode_applies_every_batchnorm():
    torch.manual_seed(0)
    model = build_model("unet", "resnet34", num_classes=4).train()
    assert isinstance(model, Unet34_scSE_hyper)
    _forward_backward(model, torch.randn(1, 3, 64, 64))
    batchnorms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batchnorms) > 40
    # The original defined BatchNorm in its decoder but never applied it: here every one ran once.
    not_run = [n for n, m in batchnorms if int(m.num_batches_tracked) != 1]
    assert not not_run, f"BatchNorm layers never applied: {not_run[:5]}"


def test_unet_odd_deep_sizes_and_errors():
    torch.manual_seed(0)
    model = build_model("unet", "resnet34", aux=False).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 160, 96))  # 5x3 at stride 32
        assert set(out) == {"out"} and out["out"].shape == (1, 4, 160, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 64, 80))


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    model = build_model("unet", "resnet34").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)["out"]
        model = model.to(memory_format=torch.channels_last)
        result = model(x.contiguous(memory_format=torch.channels_last))["out"]
    torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-4)


def test_scse_is_channel_plus_spatial_excitation():
    torch.manual_seed(0)
    block = SCSE(8, reduction=2)
    x = torch.randn(2, 8, 5, 4)
    c1, c2 = block.cse[1], block.cse[3]
    pooled = x.mean(dim=(2, 3))  # [B, C]
    channel = torch.sigmoid(torch.relu(pooled @ c1.weight[:, :, 0, 0].T + c1.bias) @ c2.weight[:, :, 0, 0].T + c2.bias)
    s = block.sse[0]
    spatial = torch.sigmoid(torch.einsum("bchw,c->bhw", x, s.weight[0, :, 0, 0]) + s.bias)
    expected = x * channel[:, :, None, None] + x * spatial[:, None]
    torch.testing.assert_close(block(x), expected)


def test_unet_package_reexports_single_implementation():
    from Unet_resnet34 import model as unet_module

    assert unet_module.Unet34_scSE_hyper is models.unet.Unet34_scSE_hyper
    assert unet_module.build_unet is models.unet.build_unet
    assert isinstance(unet_module.build_unet("resnet50", aux=False), UNetResNet)


# ----------------------------------------------------------------------------- dilation


@pytest.mark.parametrize("flags", [(False, False, True), (False, True, True), (True, False, False)])
def test_dilate_resnet_matches_torchvision_bottleneck_dilation(flags):
    ours = torchvision.models.resnet50(weights=None)
    dilate_resnet_(ours, flags)
    reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=list(flags))
    ref_convs = dict(reference.named_modules())
    convs = [(n, m) for n, m in ours.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 53
    for name, conv in convs:
        ref = ref_convs[name]
        assert (conv.stride, conv.padding, conv.dilation) == (ref.stride, ref.padding, ref.dilation), name


# ----------------------------------------------------------------------------- heavy models, once each


def test_deeplabv3_resnet50_equals_torchvision():
    """Same parameter count and state_dict as torchvision's deeplabv3_resnet50 (output stride 8), same output."""
    torch.manual_seed(0)
    ours = build_model("deeplabv3", "resnet50", num_classes=4, output_stride=8).eval()
    reference = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=True
    ).eval()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    assert count == sum(p.numel() for p in build_model("deeplabv3", "resnet50", output_stride=16).parameters())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
    out = _forward_backward(ours, x)
    torch.testing.assert_close(out["out"].detach(), expected["out"])
    torch.testing.assert_close(out["aux"].detach(), expected["aux"])


def test_deeplabv3_resnet101_parameter_count_and_forward_backward():
    torch.manual_seed(0)
    ours = build_model("deeplabv3", "resnet101", num_classes=4, output_stride=16).eval()
    reference = torchvision.models.segmentation.deeplabv3_resnet101(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=True
    )
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    _forward_backward(ours, torch.randn(1, 3, 64, 64))


def test_unet_resnet50_forward_backward():
    torch.manual_seed(0)
    _forward_backward(build_model("unet", "resnet50").eval(), torch.randn(1, 3, 64, 64))


# ----------------------------------------------------------------------------- pretrained


def _randomised_resnet_state(name, seed):
    torch.manual_seed(seed)
    resnet = getattr(torchvision.models, name)(weights=None)
    for module in resnet.modules():  # make BatchNorm stats distinguishable from the defaults
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    return resnet.state_dict()


def test_pretrained_file_sets_deeplab_encoder_weights(tmp_path):
    state = _randomised_resnet_state("resnet18", 1)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_model("deeplabv3", "resnet18", pretrained=str(path))
    loaded = model.backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer3.1.conv2.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(loaded[key], state[key]), key
    assert len(loaded) == len(state) - 2  # everything except fc.weight / fc.bias
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_pretrained_file_sets_unet_encoder_weights_wrapped_checkpoint(tmp_path):
    state = _randomised_resnet_state("resnet34", 2)
    path = tmp_path / "r34_ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # wrapper + DDP prefix
    model = build_model("unet", "resnet34", pretrained=path)
    encoder = model.backbone
    assert torch.equal(encoder["stem"][0].weight, state["conv1.weight"])
    assert torch.equal(encoder["stem"][1].running_mean, state["bn1.running_mean"])
    assert torch.equal(encoder["layer1"][1][2].conv1.weight, state["layer1.2.conv1.weight"])
    assert torch.equal(encoder["layer4"][2].bn2.running_var, state["layer4.2.bn2.running_var"])


def test_pretrained_mismatch_and_missing_file(tmp_path):
    r34 = tmp_path / "resnet34.pth"
    torch.save(_randomised_resnet_state("resnet34", 3), r34)
    with pytest.raises(ValueError, match=r"resnet34\.pth.*unexpected keys.*layer1\.2"):
        build_model("deeplabv3", "resnet18", pretrained=str(r34))  # extra blocks of a deeper net
    state = _randomised_resnet_state("resnet18", 4)
    del state["layer2.0.downsample.0.weight"]
    state["conv1.weight"] = state["conv1.weight"][:, :1]
    bad = tmp_path / "bad18.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"bad18\.pth.*missing keys.*layer2\.0\.downsample\.0\.weight.*shape mismatches.*conv1\.weight"):
        build_model("deeplabv3", "resnet18", pretrained=str(bad))
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        build_model("unet", "resnet34", pretrained=str(tmp_path / "nothere.pth"))


def test_pretrained_imagenet_goes_through_torchvision_weights(monkeypatch, tmp_path):
    """'imagenet' asks torchvision's IMAGENET1K_V1 weights (faked here: tests never download)."""
    state = _randomised_resnet_state("resnet18", 5)
    requested = []

    def fake_get_state_dict(self, *args, **kwargs):
        requested.append(self)
        return state

    fetched = []
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the weights are "downloaded"
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, *a, **k: fetched.append(url))
    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", fake_get_state_dict)
    model = build_model("deeplabv3", "resnet18", pretrained="imagenet", aux=False)
    assert requested == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert fetched == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.equal(model.backbone.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
