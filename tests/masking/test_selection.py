"""kth_largest against a brute-force sort, on every path: radix, bracket, fallback."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmt_ray.masking import selection
from gmt_ray.masking.scores import GradientScores, RandomScores
from gmt_ray.masking.selection import kth_largest, radix_kth_largest

# Few distinct values force ties; wide floats exercise every exponent.
values = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 1e-30, -3e-39]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)


def reference(tensors, k):
    scores = torch.cat([t.reshape(-1).abs().float() for t in tensors])
    return scores.sort(descending=True).values[k - 1].item()


@pytest.fixture(params=["small", "bracket"])
def path(request, monkeypatch):
    # "bracket" sends even tiny inputs through sampling + bracket + fallback.
    if request.param == "bracket":
        monkeypatch.setattr(selection, "_SAMPLE_MIN_NUMEL", 0)
    return request.param


# The fixture only patches a module constant, which is the same for every example.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(st.lists(values, min_size=1, max_size=40), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    rank_fraction=st.floats(0, 1),
)
def test_matches_sort_reference(path, data, dtype, rank_fraction):
    tensors = [torch.tensor(d, dtype=torch.float32).to(dtype) for d in data]
    total = sum(t.numel() for t in tensors)
    k = min(total, 1 + math.floor(rank_fraction * total))
    got = kth_largest([GradientScores(t) for t in tensors], k)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == reference(tensors, k)


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(st.lists(values, min_size=1, max_size=40), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    rank_fraction=st.floats(0, 1),
)
def test_radix_select_matches_sort_reference(data, dtype, rank_fraction):
    # The radix select is what sharded scopes use; here on one process.
    tensors = [torch.tensor(d, dtype=torch.float32).to(dtype) for d in data]
    total = sum(t.numel() for t in tensors)
    k = min(total, 1 + math.floor(rank_fraction * total))
    scores = [t.reshape(-1).abs().float() for t in tensors]
    assert radix_kth_largest(lambda: scores, k, None, torch.device("cpu")).item() == reference(tensors, k)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.randn(300_000, generator=g),
        lambda g: torch.randn(300_000, generator=g).round(decimals=1),  # heavy ties
        # embedding-like: most rows have zero gradient
        lambda g: torch.randn(300_000, generator=g) * (torch.rand(300_000, generator=g) < 0.05),
        lambda g: torch.zeros(300_000),
        lambda g: torch.randn(300_000, generator=g).exp() ** 8,  # heavy tail, wide exponents
    ],
    ids=["normal", "ties", "mostly-zero", "all-zero", "heavy-tail"],
)
@pytest.mark.parametrize("keep", [1, 0.7, 0.3, 0.01, 1e-6])
def test_large_tensors_match_sort(make, keep):
    tensor = make(torch.Generator().manual_seed(1))
    k = max(1, math.ceil(keep * tensor.numel()))
    assert kth_largest([GradientScores(tensor)], k).item() == reference([tensor], k)


def test_bracket_miss_falls_back_to_exact(monkeypatch):
    # A bracket of zero width around a wrong value must still give the exact answer.
    monkeypatch.setattr(selection, "_BRACKET_SIGMAS", -1e9)
    tensor = torch.randn(200_000, generator=torch.Generator().manual_seed(2))
    for k in (1, 1000, 150_000, 200_000):
        assert kth_largest([GradientScores(tensor)], k).item() == reference([tensor], k)


def test_global_scope_over_segments_of_different_scales():
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(100_000, generator=g) * s for s in (1e-3, 1.0, 10.0)] + [torch.zeros(5)]
    for k in (1, 77_777, 250_000, 300_005):
        got = kth_largest([GradientScores(t) for t in tensors], k)
        assert got.item() == reference(tensors, k)


def test_random_keys_are_positive_distinct_and_reproducible():
    keys = RandomScores(1_000_000, seed=5, device=torch.device("cpu")).scores()
    again = RandomScores(1_000_000, seed=5, device=torch.device("cpu")).scores()
    assert torch.equal(keys.view(torch.int32), again.view(torch.int32))
    assert bool((keys > 0).all()) and bool(torch.isfinite(keys).all())
    assert keys.view(torch.int32).unique().numel() > 999_000
    assert int(keys.view(torch.int32).max()) <= 2**30


@pytest.mark.parametrize("k", [0, 11])
def test_rank_out_of_range_is_refused(k):
    with pytest.raises(ValueError, match=f"k={k}"):
        kth_largest([GradientScores(torch.ones(10))], k)
