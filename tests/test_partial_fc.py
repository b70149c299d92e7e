"""Partial FC: full softmax at world size 1, sampling keeps every positive, 2 gloo ranks == 1 rank
(loss and gradients, uneven / smaller last batch), state across world sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fuseface.nn.losses.margin import AdaFaceLoss, build_margin_loss
from fuseface.nn.losses.partial_fc import PartialFC, seeded_rows, shard_range

C, D = 11, 8


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 3, torch.randint(0, C, (n,), generator=g), torch.randn(C, D, generator=g)


def _reference(emb: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, loss: str):
    """Plain full softmax with the margin, on one process."""
    e = emb.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    margin = build_margin_loss(loss, s=16.0, m2=0.3)
    cos = F.linear(F.normalize(e), F.normalize(w)).clamp(-1, 1)
    logits = margin(cos, labels, e.detach().norm(dim=1)) if loss == "adaface" else margin(cos, labels)
    value = F.cross_entropy(logits, labels)
    value.backward()
    return float(value.detach()), e.grad, w.grad, margin


def test_world_size_one_is_a_full_softmax() -> None:
    emb, labels, weight = _data(9)
    pfc = PartialFC(build_margin_loss("arcface", s=16.0, m2=0.3), D, C)
    pfc.load_full_weight(weight)
    e = emb.clone().requires_grad_(True)
    value = pfc(e, labels)
    value.backward()
    ref_loss, ref_e, ref_w, _ = _reference(emb, labels, weight, "arcface")
    assert float(value.detach()) == pytest.approx(ref_loss, rel=1e-5)
    torch.testing.assert_close(e.grad, ref_e, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pfc.weight.grad, ref_w, atol=1e-5, rtol=1e-4)


def test_sampling_keeps_every_positive_and_equals_softmax_over_the_sample() -> None:
    emb, labels, weight = _data(6, seed=1)
    pfc = PartialFC(build_margin_loss("cosface", s=16.0, m3=0.2), D, C, sample_rate=0.7)
    pfc.load_full_weight(weight)
    for _ in range(5):
        value = pfc(emb, labels)
        kept = pfc.last_sampled
        assert kept.numel() == int(0.7 * C)
        assert set(labels.tolist()) <= set(kept.tolist())
        sub = weight[kept]
        remap = torch.searchsorted(kept, labels)
        cos = F.linear(F.normalize(emb), F.normalize(sub)).clamp(-1, 1)
        ref = F.cross_entropy(build_margin_loss("cosface", s=16.0, m3=0.2)(cos, remap), remap)
        assert float(value) == pytest.approx(float(ref), rel=1e-5)
    # more positives than the sample size: every positive is kept anyway
    pfc_small = PartialFC(build_margin_loss("arcface"), D, C, sample_rate=0.1)
    pfc_small(emb, labels)
    assert set(pfc_small.last_sampled.tolist()) == set(labels.tolist())


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_the_classes_and_reload_across_world_sizes(world: int) -> None:
    full = torch.randn(C, D)
    pieces, starts = [], []
    for rank in range(world):
        start, num = shard_range(C, rank, world)
        pfc = PartialFC(build_margin_loss("arcface"), D, C, rank=rank, world_size=world, init_seed=5)
        assert (pfc.class_start, pfc.num_local) == (start, num)
        torch.testing.assert_close(pfc.weight.data, seeded_rows(5, 0, C, C, D, 0.01)[start : start + num])
        pfc.load_full_weight(full)
        pieces.append(pfc.weight.data)
        starts.append(start)
    assert starts == sorted(starts)
    torch.testing.assert_close(torch.cat(pieces), full)
    with pytest.raises(ValueError, match="does not fit"):
        pfc.load_full_weight(torch.randn(C + 1, D))


@pytest.mark.distributed
def test_two_gloo_ranks_equal_one_rank(tmp_path: Path) -> None:
    from dist_helpers import run_pfc_ranks

    emb, labels, weight = _data(7, seed=2)
    cases = [
        # rank 0 gets 4 rows, rank 1 the smaller rest (3): no fixed-batch assumption
        {"name": "arcface", "loss": "arcface", "sample_rate": 1.0, "sizes": [4, 3]},
        {"name": "adaface", "loss": "adaface", "sample_rate": 1.0, "sizes": [5, 2]},
        {"name": "sampled", "loss": "arcface", "sample_rate": 0.5, "sizes": [4, 3]},
    ]
    for case in cases:
        case.update(emb=emb, labels=labels, weight=weight)
    results = run_pfc_ranks(2, {"cases": cases}, tmp_path)

    for case in cases[:2]:
        name = case["name"]
        ref_loss, ref_e, ref_w, ref_margin = _reference(emb, labels, weight, case["loss"])
        r0, r1 = results[0][name], results[1][name]
        assert r0["loss"] == pytest.approx(ref_loss, rel=1e-5)
        assert r1["loss"] == pytest.approx(ref_loss, rel=1e-5)
        # local embedding gradients are world_size x dL/dE (DDP then averages over ranks)
        got = torch.cat([r0["emb_grad"], r1["emb_grad"]]) / 2
        torch.testing.assert_close(got, ref_e, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(r0["weight_grad"], ref_w, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(r0["full_weight"], weight)
        if name == "adaface":  # statistics of the whole global batch, as on one rank
            assert isinstance(ref_margin, AdaFaceLoss)
            torch.testing.assert_close(r0["ema"], ref_margin.batch_mean)
            torch.testing.assert_close(r1["ema"], ref_margin.batch_mean)
    # sample_rate < 1 on 2 ranks: each rank keeps every positive of its own class range
    for rank in (0, 1):
        res = results[rank]["sampled"]
        start, num = res["shard"]
        positives = {int(c) for c in labels.tolist() if start <= c < start + num}
        kept = set(res["sampled"].tolist())
        assert positives <= kept
        assert len(kept) == max(1, int(0.5 * num)) or len(kept) == len(positives)
        assert all(start <= k < start + num for k in kept)
