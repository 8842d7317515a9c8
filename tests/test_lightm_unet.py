"""LightM-UNet: exact parameter counts, shapes, input checks, backends, autocast."""

from __future__ import annotations

import pytest
import torch

from napari_lightm.model import CONFIGS, LightMUNet, Mamba, available_backends


@pytest.mark.parametrize(
    ("config", "spatial_dims", "in_channels", "out_channels", "expected"),
    [
        ("repo", 2, 3, 2, 5_011_765),
        ("repo", 3, 1, 3, 5_015_766),
        ("light", 2, 3, 2, 1_342_965),
        ("light", 3, 1, 3, 1_344_966),
    ],
)
def test_parameter_count(config, spatial_dims, in_channels, out_channels, expected):
    net = LightMUNet.from_config(config, spatial_dims, in_channels, out_channels)
    assert sum(p.numel() for p in net.parameters()) == expected
    mixers = [m for m in net.modules() if isinstance(m, Mamba)]
    assert len(mixers) == 21


def test_state_dict_names():
    """The released code's layout: 21 mixers with mamba_ssm names; stable key paths."""
    keys = LightMUNet.from_config("light", 2, 1, 2).state_dict().keys()
    mixer_keys = [k for k in keys if ".mamba." in k]
    assert len(mixer_keys) == 21 * 9
    assert {k.rsplit(".mamba.", 1)[1] for k in mixer_keys} == {
        "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
        "dt_proj.bias", "A_log", "D", "out_proj.weight",
    }
    for key in ("stem.0.weight", "down_stages.0.0.rvm1.mamba.A_log",
                "down_stages.1.0.proj.weight", "down_stages.1.0.skip_scale",
                "down_stages.3.5.rvm2.norm.weight", "up_samples.0.0.weight",
                "up_stages.2.0.conv.1.weight", "head.2.1.bias"):
        assert key in keys, key


@pytest.mark.parametrize(
    ("spatial_dims", "shape"),
    [(2, (2, 1, 16, 16)), (2, (1, 1, 24, 40)), (3, (1, 1, 8, 16, 16)), (3, (2, 1, 16, 8, 24))],
)
def test_output_shape(spatial_dims, shape):
    net = LightMUNet.from_config("light", spatial_dims, shape[1], 3).eval()
    with torch.no_grad():
        y = net(torch.randn(*shape))
    assert y.shape == (shape[0], 3, *shape[2:])
    assert y.is_contiguous() and torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "message"),
    [
        (2, (1, 1, 20, 16), "not divisible by 8"),
        (3, (1, 1, 8, 8, 12), "not divisible by 8"),
        (2, (1, 2, 16, 16), "expected 1 input channels"),
        (2, (1, 1, 16, 16, 16), "2 spatial axes"),
    ],
)
def test_bad_input_is_a_clear_error(spatial_dims, shape, message):
    net = LightMUNet.from_config("light", spatial_dims, 1, 2)
    with pytest.raises(ValueError, match=message):
        net(torch.randn(*shape))


def test_unknown_config_and_dims():
    with pytest.raises(ValueError, match="unknown LightM-UNet config"):
        LightMUNet.from_config("huge", 2, 1, 2)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        LightMUNet(4, 1, 2)
    assert set(CONFIGS) == {"light", "repo"}


def test_memory_format_does_not_change_the_result():
    torch.manual_seed(0)
    net = LightMUNet.from_config("light", 2, 1, 2).eval()
    x = torch.randn(1, 1, 16, 24)
    with torch.no_grad():
        assert torch.equal(net(x), net(x.contiguous(memory_format=torch.channels_last)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_backends_agree(spatial_dims):
    torch.manual_seed(0)
    net = LightMUNet.from_config("light", spatial_dims, 1, 2).eval()
    x = torch.randn(1, 1, *(16, 8, 8)[-spatial_dims:])  # small: the reference steps per token
    outputs = {}
    with torch.no_grad():
        for name in available_backends("cpu"):
            net.set_scan_backend(name)
            assert net.scan_backend == name
            outputs[name] = net(x)
    net.set_scan_backend(None)
    assert net.scan_backend == available_backends("cpu")[0]
    ref = outputs["reference"]
    for name, y in outputs.items():
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item(),
                                   msg=name)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bfloat16_autocast_is_finite_and_close(spatial_dims):
    """The scan runs in float32 under autocast; the rest in bfloat16 stays close."""
    torch.manual_seed(0)
    net = LightMUNet.from_config("light", spatial_dims, 1, 3).eval()
    x = torch.randn(1, 1, *(16,) * spatial_dims)
    with torch.no_grad():
        y = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_bf16 = net(x)
    assert y_bf16.dtype == torch.bfloat16
    assert torch.isfinite(y_bf16).all()
    assert ((y_bf16.float() - y).norm() / y.norm()).item() < 0.1


def test_training_step_on_cpu_backend():
    torch.manual_seed(0)
    net = LightMUNet.from_config("light", 2, 1, 2, scan_backend="cpu")
    x = torch.randn(2, 1, 16, 16)
    target = torch.randint(0, 2, (2, 16, 16))
    loss = torch.nn.functional.cross_entropy(net(x), target)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.down_stages[0][0].rvm1.mamba.A_log.grad.abs().sum() > 0
