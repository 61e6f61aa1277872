"""Loss, global-batch gather, schedule and the training step (Ray-free; one gloo test with 2 processes)."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from trainer.loss import clip_loss, info_nce
from trainer.model import Combiner
from trainer.optim import OptimSettings, build_optimizer, build_scheduler, lr_factor, train_step
from trainer.tasks import CombinerTask


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_info_nce_matches_cross_entropy():
    q, t = _unit(6, 8, 0), _unit(6, 8, 1)
    expected = F.cross_entropy(100 * q @ t.T, torch.arange(6))
    assert torch.allclose(info_nce(q, t, 100.0), expected)
    sym = 0.5 * (expected + F.cross_entropy(100 * t @ q.T, torch.arange(6)))
    assert torch.allclose(info_nce(q, t, 100.0, symmetric=True), sym)
    assert torch.allclose(clip_loss(q, t, torch.tensor(100.0)), sym)


def test_distractor_is_extra_negative_and_masked_when_it_is_the_target():
    q, t, d = _unit(4, 8, 0), _unit(4, 8, 1), _unit(4, 8, 2)
    base = info_nce(q, t, 10.0)
    with_d = info_nce(q, t, 10.0, own_negatives=[(d, torch.ones(4, dtype=torch.bool))])
    assert with_d > base
    logits = torch.cat([10 * q @ t.T, 10 * (q * d).sum(-1, keepdim=True)], 1)
    assert torch.allclose(with_d, F.cross_entropy(logits, torch.arange(4)))
    # a distractor equal to the target must not push the target away: masked, the row is unchanged
    d_same = t.clone()
    valid = torch.tensor([False, False, False, False])
    assert torch.allclose(info_nce(q, t, 10.0, own_negatives=[(d_same, valid)]), base)
    q.requires_grad_(True)
    info_nce(q, t, 10.0, own_negatives=[(d_same, valid)]).backward()
    g_masked = q.grad.clone()
    q.grad = None
    info_nce(q, t, 10.0).backward()
    assert torch.allclose(g_masked, q.grad)


def test_own_negatives_add_one_masked_column_each():
    q, t, d, r = _unit(4, 8, 0), _unit(4, 8, 1), _unit(4, 8, 2), _unit(4, 8, 3)
    valid = torch.tensor([True, False, True, False])
    both = info_nce(q, t, 10.0, own_negatives=[(d, None), (r, valid)])
    ref_col = (10 * (q * r).sum(-1, keepdim=True)).masked_fill(~valid.view(-1, 1), float("-inf"))
    logits = torch.cat([10 * q @ t.T, 10 * (q * d).sum(-1, keepdim=True), ref_col], 1)
    assert torch.allclose(both, F.cross_entropy(logits, torch.arange(4)))
    only_d = torch.cat([10 * q @ t.T, 10 * (q * d).sum(-1, keepdim=True)], 1)
    assert torch.allclose(info_nce(q, t, 10.0, own_negatives=[(d, None)]), F.cross_entropy(only_d, torch.arange(4)))
    none = torch.zeros(4, dtype=torch.bool)
    assert torch.allclose(info_nce(q, t, 10.0, own_negatives=[(r, none)]), info_nce(q, t, 10.0))


def test_combiner_task_uses_the_reference_as_a_negative_only_where_valid():
    torch.manual_seed(0)
    task = CombinerTask(None, Combiner(16, projection_dim=8, dropout=0.0), temperature=0.1)
    gen = torch.Generator().manual_seed(1)
    ref, txt, tgt = (torch.randn(4, 16, generator=gen) for _ in range(3))
    base, _ = task(ref, txt, tgt)
    off, _ = task(ref, txt, tgt, reference_valid=torch.zeros(4, dtype=torch.bool))
    on, _ = task(ref, txt, tgt, reference_valid=torch.ones(4, dtype=torch.bool))
    assert torch.allclose(off, base) and on > base
    query = task.combiner(ref, txt)
    r = F.normalize(ref, dim=-1)
    logits = torch.cat([10 * query @ F.normalize(tgt, dim=-1).T, 10 * (query * r).sum(-1, keepdim=True)], 1)
    assert torch.allclose(on, F.cross_entropy(logits, torch.arange(4)), atol=1e-5)


def test_precision_autocasts_bf16_on_cpu_only_when_asked(tmp_path):
    from cluster.config import ConfigError
    from trainer.config import ClipConfig
    from trainer.optim import autocast_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 == autocast_dtype("auto", gpu)
    assert autocast_dtype("fp16", gpu) == torch.float16 and autocast_dtype("fp32", gpu) is None
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match="fp16 needs --use-gpu"):
        ClipConfig(storage_path=str(tmp_path), name="c", captions=str(tmp_path), precision="fp16")
    task = CombinerTask(None, Combiner(16, projection_dim=8, dropout=0.0), temperature=0.1)
    gen = torch.Generator().manual_seed(1)
    ref, txt, tgt = (torch.randn(4, 16, generator=gen) for _ in range(3))
    with torch.autocast("cpu", dtype=autocast_dtype("bf16", cpu)):
        loss, _ = task(ref, txt, tgt)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # the loss itself is computed in fp32


class _AttentionProbe(torch.nn.Module):
    """A task whose forward records which attention kernel PyTorch would pick for its inputs."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(16))
        self.kernels = []

    def forward(self, x):
        from torch.nn.attention import SDPBackend

        q = (x * self.w).view(1, 2, 4, 2)
        self.kernels.append(SDPBackend(torch._fused_sdp_choice(q, q, q)))
        return F.scaled_dot_product_attention(q, q, q).sum(), {}


def test_cpu_training_step_runs_attention_as_math():
    from torch.nn.attention import SDPBackend

    from trainer.optim import attention_backend

    q = torch.randn(2, 4, 8, 16)
    assert SDPBackend(torch._fused_sdp_choice(q, q, q)) == SDPBackend.FLASH_ATTENTION  # PyTorch's own choice
    for device, dtype in (("cuda", torch.bfloat16), ("cpu", None)):  # GPUs and fp32 keep PyTorch's choice
        with attention_backend(torch.device(device), dtype):
            assert SDPBackend(torch._fused_sdp_choice(q, q, q)) == SDPBackend.FLASH_ATTENTION
    task = _AttentionProbe()
    settings = OptimSettings(lr=0.1, max_steps=2)
    opt = build_optimizer([{"params": list(task.parameters())}], settings)
    out = train_step(task, {"x": torch.randn(16)}, opt, build_scheduler(opt, settings), None,
                     device=torch.device("cpu"), dtype=torch.bfloat16, grad_clip=1.0)
    assert task.kernels == [SDPBackend.MATH] and torch.isfinite(out["loss_local"])
    assert not torch.equal(task.w.detach(), torch.ones(16))


def _gather_worker(rank, world, init, out_dir):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    comb = Combiner(16, projection_dim=8, dropout=0.0)
    task = torch.nn.parallel.DistributedDataParallel(CombinerTask(None, comb, symmetric=True))
    gen = torch.Generator().manual_seed(1)
    ref, txt, tgt = (torch.randn(8, 16, generator=gen) for _ in range(3))
    sl = slice(rank * 4, rank * 4 + 4)
    loss, _ = task(ref[sl], txt[sl], tgt[sl])
    loss.backward()
    from trainer.loss import mean_over_ranks

    value = mean_over_ranks(loss)
    if rank == 0:
        torch.save({"loss": value, "grads": [p.grad for p in comb.parameters()]}, os.path.join(out_dir, "r.pt"))
    dist.destroy_process_group()


def test_two_process_global_batch_equals_single_process(tmp_path):
    init = f"file://{tmp_path / 'pg'}"
    mp.start_processes(_gather_worker, args=(2, init, str(tmp_path)), nprocs=2, start_method="spawn")
    got = torch.load(tmp_path / "r.pt")
    torch.manual_seed(0)
    comb = Combiner(16, projection_dim=8, dropout=0.0)
    gen = torch.Generator().manual_seed(1)
    ref, txt, tgt = (torch.randn(8, 16, generator=gen) for _ in range(3))
    loss, _ = CombinerTask(None, comb, symmetric=True)(ref, txt, tgt)
    loss.backward()
    assert math.isclose(got["loss"], float(loss.detach()), rel_tol=1e-5)
    for g, p in zip(got["grads"], comb.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6, rtol=1e-4)


def test_lr_schedule_warmup_then_cosine():
    s = OptimSettings(lr=1.0, warmup_steps=4, min_lr=0.1, max_steps=14)
    assert [lr_factor(i, s) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, s) == pytest.approx(1.0)
    assert lr_factor(9, s) == pytest.approx(0.55)
    assert lr_factor(14, s) == pytest.approx(0.1)
    assert lr_factor(100, s) == pytest.approx(0.1)


def _step(scaler, clip):
    torch.manual_seed(0)
    comb = Combiner(16, projection_dim=8, dropout=0.0)
    task = CombinerTask(None, comb)
    settings = OptimSettings(lr=1e-3, max_steps=10, grad_clip=clip)
    opt = build_optimizer([{"params": list(task.parameters())}], settings)
    sched = build_scheduler(opt, settings)
    gen = torch.Generator().manual_seed(1)
    batch = {k: torch.randn(8, 16, generator=gen) for k in ("ref", "text", "target")}
    out = train_step(task, batch, opt, sched, scaler, device=torch.device("cpu"), dtype=None, grad_clip=clip)
    return out, [p.detach().clone() for p in comb.parameters()]


def test_clipping_acts_on_unscaled_gradients():
    plain, w_plain = _step(None, 0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    scaled, w_scaled = _step(scaler, 0.5)
    # the reported (pre-clip) norm is the true one, not 2^16 times it, and the update is identical
    assert scaled["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
    assert plain["grad_norm"] > 0.5
    for a, b in zip(w_plain, w_scaled):
        assert torch.allclose(a, b, atol=1e-6)
