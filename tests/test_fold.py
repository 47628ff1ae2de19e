"""BatchNorm folding: every registered model after real training steps, odd layouts, refusals."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from leafscout.deploy.fold import FoldError, count_batchnorm, fold_batchnorm
from leafscout.vision import create_model, get_entry, list_models

# Registered models whose BatchNorm cannot be folded, and the module it sits at.
UNFOLDABLE = {"lenet_bn_after": "features.2"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny layers on a shared CPU: one thread is faster and keeps timings stable."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _train_steps(model: nn.Module, shape: tuple[int, ...], steps: int = 4, seed: int = 0) -> nn.Module:
    """A few SGD steps on shifted, scaled inputs so running statistics move far from (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, *shape, generator=gen) * 3.0 + 1.5
        loss = model(x).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _assert_same_function(a: nn.Module, b: nn.Module, x: torch.Tensor, atol: float = 1e-4) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert torch.allclose(ya, yb, rtol=1e-4, atol=atol), f"max diff {(ya - yb).abs().max().item()}"


@pytest.mark.parametrize("name", list_models())
def test_fold_every_registered_model_after_training(name: str) -> None:
    size = tuple(min(s, 32) for s in get_entry(name).input_size)  # global-pool models take any size
    torch.manual_seed(0)
    model = _train_steps(create_model(name, num_classes=6), (3, *size))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:  # the statistics really moved, so folding has something to get wrong
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    if name in UNFOLDABLE:
        with pytest.raises(FoldError, match=rf"'{UNFOLDABLE[name]}'.*follows ReLU"):
            fold_batchnorm(model)
        return
    folded = fold_batchnorm(model)
    assert count_batchnorm(folded) == 0
    assert not folded.training
    _assert_same_function(model, folded, torch.randn(5, 3, *size) * 2 + 0.5)
    # Pure: the original keeps its BatchNorms and its exact weights.
    assert count_batchnorm(model) == len(bns)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_handles_bias_free_convs_and_non_affine_bn() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8, affine=False),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, bias=True),
        nn.BatchNorm2d(8, eps=1e-3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16, bias=False),
        nn.BatchNorm1d(16, affine=False),
        nn.ReLU(),
        nn.Linear(16, 4),
        nn.BatchNorm1d(4),
    )
    model = _train_steps(model, (3, 12, 12))
    folded = fold_batchnorm(model)
    assert count_batchnorm(folded) == 0
    assert folded[0].bias is not None and folded[8].bias is not None  # bias created where there was none
    _assert_same_function(model, folded, torch.randn(6, 3, 12, 12) * 2 + 1)


def test_fold_nested_sequentials_conv1d() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Sequential(nn.Conv1d(2, 5, 3), nn.BatchNorm1d(5), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Conv1d(5, 5, 3, bias=False), nn.BatchNorm1d(5, affine=False))),
        nn.Flatten(),
    )
    model = _train_steps(model, (2, 16))
    folded = fold_batchnorm(model)
    assert count_batchnorm(folded) == 0
    _assert_same_function(model, folded, torch.randn(3, 2, 16))


class _NotSequential(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@pytest.mark.parametrize(
    "model, match",
    [
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), r"'2'.*follows ReLU.*cannot be merged"),
        (nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)), r"'0'.*first layer"),
        (nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm2d(4)), r"BatchNorm2d at '2'.*follows Linear, not Conv2d"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), r"'1'.*no running statistics"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.BatchNorm2d(4)), r"follows MaxPool2d"),
        (nn.Sequential(nn.Identity(), _NotSequential()), r"'1\.bn'.*not an nn\.Sequential"),
    ],
    ids=["bn-after-relu", "bn-first", "bn2d-after-linear", "no-running-stats", "bn-after-pool", "not-sequential"],
)
def test_unfoldable_layouts_are_refused_with_the_module_path(model: nn.Module, match: str) -> None:
    with pytest.raises(FoldError, match=match):
        fold_batchnorm(model.eval())


@settings(max_examples=25, deadline=None)
@given(
    cin=st.integers(1, 4),
    cout=st.integers(1, 6),
    bias=st.booleans(),
    affine=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_fold_conv_bn_matches_for_any_shape(cin: int, cout: int, bias: bool, affine: bool, eps: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, bias=bias), nn.BatchNorm2d(cout, eps=eps, affine=affine))
    bn = model[1]
    with torch.no_grad():  # arbitrary but valid statistics and affine parameters
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.05, 4)
        if affine:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    folded = fold_batchnorm(model.eval())
    _assert_same_function(model, folded, torch.randn(2, cin, 7, 7), atol=1e-4)
