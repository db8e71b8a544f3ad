"""The PyTorch twins of benchmarks/torch_models.py have the Flax networks' sizes (needs torch;
skipped without it)."""

import sys

import pytest

import mobilenets
from tests.conftest import REPO_ROOT

torch = pytest.importorskip("torch")
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import torch_models  # noqa: E402


@pytest.mark.parametrize("name", sorted(mobilenets.ARCHITECTURES))
def test_twin_has_the_flax_sizes_and_runs(name):
    alpha = 1.0 if name == "resnet50" else 0.75
    model = torch_models.TORCH_MODELS[name](2, alpha)
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    profile = mobilenets.profile(name, alpha=alpha, image_size=64, num_classes=2)
    assert (params, stats) == (profile.params, profile.batch_stats)
    model.train()
    logits = model(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert tuple(logits.shape) == (2, 2)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
