"""build_model: timm's layout and numbers, any input size, the resize path, gradients."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import RANDOM_SEED, random_config, resizes
from torch import nn

from mvit_nas import ArchConfig, InputError, build_model, from_timm, preset, to_timm
from mvit_nas.config import PRESETS

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "timm_mobilevit_state_dict_shapes.json"
PUBLISHED_PARAMS = {"xxs": 1_272_024, "xs": 2_317_848, "s": 5_578_632}


# sha256 of the compact JSON of [[key, shape], ...] in timm's order, per variant, so the layout check runs even
# where ../shared/reference is absent (a clean clone elsewhere).
REFERENCE_DIGESTS = {
    "xxs": "032025efb8d7a6b248f3085cf0e07a2df0b9ff4581afaee811fc79692c282f74",
    "xs": "a4d0e9e4d03c32d9fa7771cae2165209eb620921684ab0cc61a3d4a84a2c4995",
    "s": "277f29399cddbe46b4ec9ac78ccbeec6ddd20f6a5de8698c859b014bb545a1ff",
}


def _layout_digest(items: list[tuple[str, list[int]]]) -> str:
    return hashlib.sha256(json.dumps(items, separators=(",", ":")).encode()).hexdigest()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# Layout and size (no timm needed)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", PRESETS)
def test_state_dict_matches_timm_reference(variant: str) -> None:
    items = [(key, list(tensor.shape)) for key, tensor in build_model(preset(variant)).state_dict().items()]
    assert len(items) == 311
    assert sum(key.endswith("num_batches_tracked") for key, _ in items) == 32
    if REFERENCE.exists():
        expected = json.loads(REFERENCE.read_text())[f"mobilevit_{variant}"]
        ours = dict(items)
        assert sorted(set(expected) - set(ours)) == []
        assert sorted(set(ours) - set(expected)) == []
        assert ours == expected
        assert list(ours) == list(expected)  # same order as timm, too
        assert _layout_digest(list(expected.items())) == REFERENCE_DIGESTS[variant]
    assert _layout_digest(items) == REFERENCE_DIGESTS[variant]


@pytest.mark.parametrize("variant", PRESETS)
def test_param_count_is_published(variant: str) -> None:
    model = build_model(preset(variant))
    assert _n_params(model) == PUBLISHED_PARAMS[variant]


def test_param_breakdown_of_s() -> None:
    """MOBILEVIT.md: stem 464; layers 3,968 / 86,528 / 656,768 / 1,772,032 / 2,314,192; final 103,680; head 641,000."""
    model = build_model(preset("s"))
    parts = [model.stem, *model.stages, model.final_conv, model.head]
    assert [_n_params(part) for part in parts] == [
        464,
        3_968,
        86_528,
        656_768,
        1_772_032,
        2_314_192,
        103_680,
        641_000,
    ]


def test_structure_follows_reference() -> None:
    """Bias-free convs each followed by BN(eps 1e-5), SiLU activations, LN in the transformer."""
    model = build_model(preset("xxs"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(conv.bias is None for conv in convs)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-5 for bn in bns)
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish))}
    assert acts == {nn.SiLU}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(linear.bias is not None for linear in linears)
    dropouts = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    assert dropouts == {0.05, 0.1}


# ---------------------------------------------------------------------------------------------------------------
# Against timm (when importable)
# ---------------------------------------------------------------------------------------------------------------


def _randomise_(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BN/LN non-trivial affine parameters and running statistics, in place."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                size = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.2 * torch.randn(size, generator=generator))
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=generator))


def _timm_model(variant: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(f"mobilevit_{variant}", pretrained=False)


@pytest.fixture(scope="module")
def timm_pairs() -> Iterator[Callable[[str], tuple[nn.Module, nn.Module]]]:
    """(timm model with randomised weights, our model with those weights transplanted), both eval."""
    cache: dict[str, tuple[nn.Module, nn.Module]] = {}

    def get(variant: str) -> tuple[nn.Module, nn.Module]:
        if variant not in cache:
            theirs = _timm_model(variant)
            _randomise_(theirs, torch.Generator().manual_seed(PRESETS.index(variant)))
            ours = build_model(preset(variant))
            ours.load_state_dict(from_timm(theirs.state_dict(), reference=ours.state_dict()), strict=True)
            cache[variant] = (theirs.eval(), ours.eval())
        return cache[variant]

    yield get


@pytest.mark.parametrize("size", [256, 224], ids=["256px", "224px-resized"])
@pytest.mark.parametrize("variant", PRESETS)
def test_logits_equal_timm(variant: str, size: int, timm_pairs: Callable[[str], tuple[nn.Module, nn.Module]]) -> None:
    theirs, ours = timm_pairs(variant)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == expected.shape == (2, 1000)
    assert torch.isfinite(expected).all()
    # Non-trivial: the two images give different logits, spread well beyond the tolerance.
    assert (expected[0] - expected[1]).abs().max() > 1e-2
    assert expected.std() > 1e-2
    assert (got - expected).abs().max().item() <= 1e-4


def test_transplant_matters(timm_pairs: Callable[[str], tuple[nn.Module, nn.Module]]) -> None:
    """A freshly initialised model differs from timm's: the equality above is not by accident."""
    theirs, _ = timm_pairs("xxs")
    fresh = build_model(preset("xxs")).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (fresh(x) - theirs(x)).abs().max() > 1e-3


@pytest.mark.parametrize("variant", PRESETS)
def test_to_timm_loads_strictly(variant: str) -> None:
    theirs = _timm_model(variant).eval()
    ours = build_model(preset(variant))
    _randomise_(ours, torch.Generator().manual_seed(7))
    ours.eval()
    result = theirs.load_state_dict(to_timm(ours.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (theirs(x) - ours(x)).abs().max().item() <= 1e-4


def test_to_timm_keeps_tensors() -> None:
    sd = build_model(preset("xxs")).state_dict()
    out = to_timm(sd)
    assert list(out) == list(sd)
    assert all(out[key] is sd[key] for key in sd)


# ---------------------------------------------------------------------------------------------------------------
# from_timm layout checks
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xxs_state() -> dict[str, torch.Tensor]:
    return build_model(preset("xxs")).state_dict()


def test_from_timm_accepts_matching_layout(xxs_state: dict[str, torch.Tensor]) -> None:
    out = from_timm(xxs_state, reference=xxs_state)
    assert list(out) == list(xxs_state)
    build_model(preset("xxs")).load_state_dict(out, strict=True)


def test_from_timm_strips_module_prefix(xxs_state: dict[str, torch.Tensor]) -> None:
    wrapped = {f"module.{key}": value for key, value in xxs_state.items()}
    out = from_timm(wrapped, reference=xxs_state)
    assert list(out) == list(xxs_state)


def test_from_timm_missing_key(xxs_state: dict[str, torch.Tensor]) -> None:
    broken = dict(xxs_state)
    del broken["stages.2.1.transformer.0.attn.qkv.weight"]
    with pytest.raises(InputError) as info:
        from_timm(broken, reference=xxs_state)
    assert info.value.field == "state_dict"
    assert "stages.2.1.transformer.0.attn.qkv.weight" in info.value.problem


def test_from_timm_unexpected_key(xxs_state: dict[str, torch.Tensor]) -> None:
    broken = {**xxs_state, "head.extra.weight": torch.zeros(3)}
    with pytest.raises(InputError) as info:
        from_timm(broken, reference=xxs_state)
    assert info.value.field == "state_dict"
    assert "head.extra.weight" in info.value.problem


def test_from_timm_wrong_shape(xxs_state: dict[str, torch.Tensor]) -> None:
    key = "head.fc.weight"
    broken = {**xxs_state, key: torch.zeros(10, 320)}
    with pytest.raises(InputError) as info:
        from_timm(broken, reference=xxs_state)
    assert key in info.value.field
    assert "(10, 320)" in info.value.problem


def test_from_timm_other_variant_is_rejected(xxs_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(InputError):
        from_timm(build_model(preset("xs")).state_dict(), reference=xxs_state)


# ---------------------------------------------------------------------------------------------------------------
# Forward on any input
# ---------------------------------------------------------------------------------------------------------------


def _small_config(**changes: Any) -> ArchConfig:
    """XXS-shaped but narrow: a 16 px feature map in layer3 at 128 px, patch 3 (resizes), 10 classes."""
    base = preset("xxs")
    vit = {"transformer_channels": 16, "ffn_dim": 24, "num_heads": 2, "transformer_blocks": 1}
    return dataclasses.replace(
        base,
        layer3=dataclasses.replace(base.layer3, out_channels=16, patch_h=3, patch_w=2, **vit),
        layer4=dataclasses.replace(base.layer4, out_channels=16, patch_h=2, patch_w=3, **vit),
        layer5=dataclasses.replace(base.layer5, out_channels=24, patch_h=2, patch_w=2, **vit),
        resolution=128,
        num_classes=10,
        **changes,
    )


SIZES = [(1, 32, 32), (3, 32, 32), (1, 33, 47), (2, 96, 160), (3, 160, 96), (1, 64, 64), (2, 65, 33), (1, 257, 255)]


@pytest.mark.parametrize(("batch", "height", "width"), SIZES, ids=[f"{b}x{h}x{w}" for b, h, w in SIZES])
def test_forward_any_size(batch: int, height: int, width: int) -> None:
    cfg = _small_config()
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, height, width))
    assert out.shape == (batch, cfg.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 32, 32), (3, 33, 47), (2, 96, 160)])
def test_forward_any_size_preset(batch: int, height: int, width: int) -> None:
    model = build_model(preset("xxs")).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, height, width))
    assert out.shape == (batch, 1000)
    assert torch.isfinite(out).all()


def test_batch_elements_are_independent() -> None:
    """In eval mode each image's logits do not depend on the rest of the batch."""
    model = build_model(_small_config()).eval()
    x = torch.randn(3, 3, 45, 61)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    assert (together - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize("index", range(8))
def test_forward_random_configs(index: int) -> None:
    rng = random.Random(RANDOM_SEED + 100 + index)
    cfg = random_config(rng)
    model = build_model(cfg).eval()
    shapes = [(2, cfg.resolution, cfg.resolution), (1, 32, 32), (1, 37, 53)]
    with torch.no_grad():
        for batch, height, width in shapes:
            out = model(torch.randn(batch, 3, height, width))
            assert out.shape == (batch, cfg.num_classes)
            assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------
# The resize path and training
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def interpolate_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
    """Records (input shape, output size) of every F.interpolate call made while the test runs."""
    calls: list[tuple[tuple[int, ...], tuple[int, int]]] = []
    original = F.interpolate

    def spy(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(x, *args, **kwargs)
        calls.append((tuple(x.shape), tuple(out.shape[-2:])))
        assert kwargs.get("mode") == "bilinear" and kwargs.get("align_corners") is False
        return out

    monkeypatch.setattr(F, "interpolate", spy)
    return calls


def test_resize_path_runs(interpolate_calls: list[tuple[tuple[int, ...], tuple[int, int]]]) -> None:
    cfg = _small_config()
    # 128 px: layer3 map 16x16 with patch 3x2 -> 18x16; layer4 8x8 with patch 2x3 -> 8x9; layer5 4x4 / 2x2 (none).
    assert resizes(cfg, 128, 128)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 128, 128))
    dim = 16
    assert interpolate_calls == [
        ((2, dim, 16, 16), (18, 16)),
        ((2, dim, 18, 16), (16, 16)),
        ((2, dim, 8, 8), (8, 9)),
        ((2, dim, 8, 9), (8, 8)),
    ]


def test_no_resize_when_patches_divide(interpolate_calls: list[tuple[tuple[int, ...], tuple[int, int]]]) -> None:
    model = build_model(preset("xxs")).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # maps 8, 4, 2: all divisible by 2
    assert interpolate_calls == []
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))  # maps 12, 6, 3: layer5 resizes 3 -> 4 and back
    assert interpolate_calls == [((1, 96, 3, 3), (4, 4)), ((1, 96, 4, 4), (3, 3))]


def test_resize_changes_the_output() -> None:
    """The resized map is really used: a patch that does not divide gives another block output than patch 1."""
    cfg = _small_config()
    one = dataclasses.replace(cfg, layer3=dataclasses.replace(cfg.layer3, patch_h=1, patch_w=1))
    a, b = build_model(cfg).eval(), build_model(one).eval()
    _randomise_(a, torch.Generator().manual_seed(3))
    b.load_state_dict(a.state_dict())  # patch size changes no parameter
    block_a, block_b = a.stages[2][1], b.stages[2][1]
    x = torch.randn(1, 16, 16, 16)
    with torch.no_grad():
        out_a, out_b = block_a(x), block_b(x)
    assert out_a.shape == out_b.shape == x.shape
    assert (out_a - out_b).abs().max() > 1e-3


@pytest.mark.parametrize(("height", "width"), [(128, 128), (47, 33)])
def test_gradients_flow_in_train_mode(height: int, width: int) -> None:
    torch.manual_seed(0)
    cfg = _small_config()
    assert resizes(cfg, height, width)
    model = build_model(cfg).train()
    x = torch.randn(2, 3, height, width, requires_grad=True)
    logits = model(x)
    loss = F.cross_entropy(logits, torch.tensor([1, 7]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    # Train-mode BatchNorm updated its running statistics.
    assert all(bn.num_batches_tracked.item() == 1 for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))


def test_train_mode_dropout_is_active_and_eval_is_deterministic() -> None:
    cfg = _small_config(classifier_dropout=0.5, transformer_dropout=0.5)
    model = build_model(cfg)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        first = model(x)
        torch.manual_seed(1)
        assert not torch.equal(first, model(x))
