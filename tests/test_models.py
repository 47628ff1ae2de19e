"""Every registered model: forward shape, finite outputs, parameter counts, `leafscout models`."""
from __future__ import annotations

import pytest
import torch

from leafscout.cli import main
from leafscout.vision import count_macs, count_params, create_model, get_entry, list_models

# Counts for 32 classes, worked out from the architectures; a change here is a change of model.
KNOWN_PARAMS = {"leafnet_bn": 591_104, "leafnet_bn_deep": 738_816, "leafnet_bn_deeper": 886_528, "lenet": 63_876, "lenet_bn": 64_102, "lenet_bn_after": 64_328}


def test_registry_has_the_issue_models() -> None:
    assert set(KNOWN_PARAMS) <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_finite_and_param_count(name: str) -> None:
    torch.manual_seed(0)
    h, w = get_entry(name).input_size
    for num_classes in (2, 32):
        model = create_model(name, num_classes=num_classes)
        model.train()
        x = torch.randn(4, 3, h, w)
        out = model(x)
        assert out.shape == (4, num_classes)
        assert torch.isfinite(out).all()
        out.logsumexp(1).mean().backward()  # gradients flow to every parameter
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        model.eval()
        with torch.inference_mode():
            a, b = model(x[:2]), model(x)[:2]
        assert torch.allclose(a, b, atol=1e-5)  # eval mode: no batch coupling
    n = count_params(create_model(name, num_classes=32))
    assert n == sum(p.numel() for p in create_model(name, num_classes=32).parameters())
    if name in KNOWN_PARAMS:
        assert n == KNOWN_PARAMS[name]
    assert count_macs(create_model(name, num_classes=32), (h, w)) > n
    assert n <= 1_000_000  # the field classifier issue's budget for any model we ship


def test_models_cli_lists_every_model(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{count_params(create_model(name, num_classes=32)):,}" in line
    assert "43,360,256" in out  # leafnet_bn MACs at 64x64


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="leafnet_bn"):
        create_model("resnet9000", num_classes=3)
