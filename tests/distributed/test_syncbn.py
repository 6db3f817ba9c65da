"""Synchronised BatchNorm over two gloo processes equals one BatchNorm over the whole batch (float64): the
BatchNorm2d of units, encoders and conv heads, and the BatchNorm1d of AugLocal heads of depth 1."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.conftest import tiny_net
from tests.distributed.conftest import free_port

from contsup.distributed.syncbn import convert_sync_batchnorm
from contsup.method import local_step


def whole_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(12, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (12,), generator=g)


SETTINGS = {"1c2f": {}, "auglocal": {"head": "auglocal", "aux_depth": 1}}


def replica(rank: int, port: int, out: str, head: str) -> None:
    """One of two replicas: half the batch, synchronised BN, gradients averaged."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = convert_sync_batchnorm(tiny_net(4, "R1E", **SETTINGS[head]).double(), dist.group.WORLD)
    x, y = whole_batch()
    local_step(net, x[rank * 6:(rank + 1) * 6], y[rank * 6:(rank + 1) * 6])
    grads = {}
    for name, p in net.named_parameters():
        grads[name] = p.grad.clone()
        dist.all_reduce(grads[name])
        grads[name] /= 2
    if rank == 0:
        torch.save({"grads": grads, "state": net.state_dict()}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("head", SETTINGS)
def test_two_replicas_equal_the_whole_batch(tmp_path, head):
    out = str(tmp_path / "replica.pt")
    ctx = mp.start_processes(replica, args=(free_port(), out, head), nprocs=2, join=False, start_method="spawn")
    for _ in range(120):
        if ctx.join(timeout=0.5):
            break
    else:
        for p in ctx.processes:
            p.kill()
        raise AssertionError("replicas did not finish within 60 s")
    got = torch.load(out, weights_only=True)
    net = tiny_net(4, "R1E", **SETTINGS[head]).double()
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == (head == "auglocal")
    local_step(net, *whole_batch())
    for name, p in net.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
    for key, value in net.state_dict().items():  # running mean, unbiased running variance, batch count
        torch.testing.assert_close(got["state"][key], value, rtol=1e-12, atol=1e-12, msg=key)
