"""The end-to-end baselines on 2 ranks compute what one end-to-end process computes (docs/parallel.md)."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.distributed.conftest import free_port
from tests.distributed.test_pipeline import BASE, assert_same_run, reference

from contsup.cli import main
from contsup.config import DataConfig, LocalConfig, RunConfig, TrainConfig
from contsup.distributed.baselines import DDPStep, cross_entropy
from contsup.run import build_network

E2E = [*BASE, "--modules", "1", "--batch-size", "32"]
# LayerNorm only: micro-batches change nothing but rounding. SGD: AdamW would blow the rounding of the key
# bias's gradient (exactly zero in exact arithmetic) up to full-size steps.
VIT = ["--arch", "vit-mini-p8"]


@pytest.mark.parametrize("parallel,flags", [
    pytest.param(["--parallel", "gpipe", "--micro-batches", "4"], VIT, marks=pytest.mark.quick),
    (["--parallel", "1f1b", "--micro-batches", "4", "--stage-units", "4,5"], VIT),
    (["--parallel", "interleaved", "--micro-batches", "2"], VIT),
    (["--parallel", "zbv", "--micro-batches", "4"], VIT),
    # one micro-batch: BatchNorm sees the whole batch, as in one process
    (["--parallel", "gpipe", "--micro-batches", "1"], []),
    (["--parallel", "ddp"], ["--train-subset", "32"]),  # BatchNorm statistics over both ranks' shares
])
def test_baseline_equals_one_end_to_end_process(ranks, tmp_path, parallel, flags):
    ranks.start(2, [*E2E, *flags, *parallel, "--out", str(tmp_path / "par")])
    reference([*E2E, *flags, "--out", str(tmp_path / "ref")])
    results = ranks.finish(timeout=90)
    for code, _, err in results:
        assert code == 0, err
    assert "final test error" in results[0][1] and results[1][1] == ""
    # DDP sums two shares' gradients and BatchNorm statistics in another order: float32 rounding differs and
    # grows through the whole depth (2 steps here; 2.6e-3 after 4); exactness itself is shown in float64 below.
    ddp = "ddp" in parallel
    assert_same_run(tmp_path / "par", tmp_path / "ref", atol=5e-4 if ddp else 1e-5, momentum_atol=5e-3 if ddp else None)
    peaks = json.loads((tmp_path / "par" / "summary.json").read_text())["rank_step_peak_memory_bytes"]
    assert len(peaks) == 2 and min(peaks) > 0  # each rank's allocator peak in one more step, after the epochs


@pytest.mark.parametrize("parallel", [["--parallel", "1f1b", "--micro-batches", "4"],
                                      ["--parallel", "gpipe", "--micro-batches", "2"],
                                      ["--parallel", "interleaved", "--micro-batches", "2"],
                                      ["--parallel", "zbv", "--micro-batches", "4"]])
def test_schedule_with_batchnorm_equals_one_process_of_micro_batches(ranks, tmp_path, parallel):
    """With BatchNorm, a schedule's run is one process that trains each batch's micro-batches in turn
    (`--parallel 1f1b` without ranks): the curve that the time-to-accuracy table uses (docs/parallel.md)."""
    ranks.start(2, [*E2E, *parallel, "--out", str(tmp_path / "par")])
    reference([*E2E, *parallel, "--out", str(tmp_path / "ref")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 0, err
    assert_same_run(tmp_path / "par", tmp_path / "ref", atol=1e-5)
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert "step_peak_memory_bytes" not in summary  # a whole batch's step is not what this run holds


def ddp_rank(rank: int, port: int, out: dict) -> None:
    """One rank of a float64 DDP step on a fixed batch; rank 0 stores its gradients and BatchNorm buffers."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = build_network(TINY, 3, 10, 32).double().train()
    DDPStep(net, torch.device("cpu"), dist.group.WORLD).train(fixed_batch())
    if rank == 0:
        out["grads"] = {n: p.grad for n, p in net.named_parameters()}
        out["state"] = net.state_dict()
    dist.destroy_process_group()


TINY = RunConfig(DataConfig("synthetic"), "resnet8", LocalConfig(modules=1), TrainConfig(device="cpu"))


def fixed_batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 32, 32, generator=gen, dtype=torch.float64), torch.randint(0, 10, (16,), generator=gen)


def test_ddp_step_equals_one_process_on_the_full_batch_in_float64():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(ddp_rank, args=(free_port(), out), nprocs=2)
        grads, state = dict(out["grads"]), dict(out["state"])
    ref = build_network(TINY, 3, 10, 32).double().train()
    x, y = fixed_batch()
    cross_entropy(ref.classifier(ref.blocks[0](x)), y).backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-12, rtol=0, msg=name)
    for name, want in ref.state_dict().items():  # running statistics of the full batch
        torch.testing.assert_close(state[name], want, atol=1e-12, rtol=0, msg=name)


@pytest.mark.parametrize("flags,message", [
    (["--parallel", "gpipe", "--modules", "4"], "trains the network end to end: use --modules 1"),
    (["--parallel", "1f1b", "--modules", "1", "--micro-batches", "3"], "--micro-batches 3 must divide --batch-size 32"),
    (["--parallel", "1f1b", "--modules", "1", "--micro-batches", "1"], "at least as many micro-batches as ranks"),
    (["--parallel", "gpipe", "--modules", "1", "--stage-units", "2,2"], "--stage-units 2,2: need 2 positive counts"),
    (["--parallel", "gpipe", "--modules", "1", "--channels-last"], "runs without --channels-last"),
    (["--parallel", "ddp", "--modules", "1", "--stage-units", "2,2"], "has no stages"),
    (["--parallel", "ddp", "--modules", "1", "--batch-size", "33"], "--batch-size 33 must divide into the 2 ranks"),
])
def test_bad_combination_is_refused_in_one_line(ranks, tmp_path, flags, message):
    ranks.start(2, [*BASE, "--batch-size", "32", *flags, "--out", str(tmp_path / "par")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1


def test_baseline_resumes_from_its_merged_checkpoint(ranks, tmp_path):
    """A schedule's merged checkpoint resumes on the ranks, equal to one process trained without a stop."""
    flags = [*E2E, "--train-subset", "32"]
    schedule = ["--parallel", "gpipe", "--micro-batches", "1"]
    ranks.start(2, [*flags, *schedule, "--epochs", "1", "--out", str(tmp_path / "par")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 0, err
    ranks.start(2, [*flags, *schedule, "--resume", "--out", str(tmp_path / "par")])
    reference([*flags, "--out", str(tmp_path / "ref")])
    for code, _, err in ranks.finish(timeout=90):
        assert code == 0, err
    assert_same_run(tmp_path / "par", tmp_path / "ref", atol=1e-5)


def test_one_process_schedule_is_refused_in_one_line_with_local_modules(tmp_path, capsys):
    args = [*BASE, "--modules", "2", "--parallel", "1f1b", "--batch-size", "32", "--out", str(tmp_path / "one")]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "trains the network end to end: use --modules 1" in err and len(err.strip().splitlines()) == 1


def test_rank_step_peak_leaves_the_network_as_it_was():
    """The extra step that measures a rank's step peak drops its gradients and restores BatchNorm's buffers."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        net = build_network(TINY, 3, 10, 32).train()
        step = DDPStep(net, torch.device("cpu"), dist.group.WORLD)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        peak = step.step_peak(8)
    finally:
        dist.destroy_process_group()
    assert peak.peak_bytes > 0 and "allocator" in peak.method
    assert all(p.grad is None for p in net.parameters())
    for key, want in before.items():  # running statistics and batch counts included
        assert torch.equal(net.state_dict()[key], want), key
