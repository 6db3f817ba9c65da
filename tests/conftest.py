"""Shared fixtures: tiny networks and batches for fast CPU tests."""

from __future__ import annotations

import copy
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contsup.method import LocalConfig, LocalNetwork, local_step
from contsup.method.heads import HeadSite, LocalHead
from contsup.models import Shape, resnet

torch.set_num_threads(1)  # one thread: two oversubscribe a busy 2-core machine (CI) and run 10-100x slower


def pytest_configure(config: pytest.Config) -> None:
    """Run as from a terminal: a test process started in the background (`make test &`) inherits an ignored SIGINT,
    and so would every process a Ctrl-C test starts; a caught handler is reset to the default by exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def tiny_net(modules: int = 4, context: str = "R1E", in_ch: int = 3, size: int = 16, **kw) -> LocalNetwork:
    """ResNet-20 (10 units) on small images, cut into `modules` modules."""
    torch.manual_seed(0)
    backbone = resnet(20, in_ch, 10)
    config = LocalConfig(modules=modules, context=context, **kw)
    return LocalNetwork(backbone, config, torch.zeros(1, in_ch, size, size))


def assert_same_training(plain: LocalNetwork, other: LocalNetwork, batch: tuple[torch.Tensor, torch.Tensor],
                         rtol: float = 1e-5, atol: float = 1e-5, steps: int = 3) -> None:
    """Two networks of the same function train alike: SGD steps on one batch give the same losses, logits and
    gradients each step, and the same buffers and state_dict keys after."""
    x, y = batch
    nets = (plain, other)
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in nets]
    for _ in range(steps):
        outs = []
        for net, opt in zip(nets, opts, strict=True):
            opt.zero_grad()
            outs.append(local_step(net, x, y))
        torch.testing.assert_close(outs[1].losses, outs[0].losses, rtol=rtol, atol=atol)
        torch.testing.assert_close(outs[1].logits, outs[0].logits, rtol=rtol, atol=atol)
        for (n, p), q in zip(plain.named_parameters(), other.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol, msg=n)
        for opt in opts:
            opt.step()
    for (n, a), b in zip(plain.named_buffers(), other.buffers(), strict=True):
        torch.testing.assert_close(b.float(), a.float(), rtol=rtol, atol=atol, msg=n)
    assert plain.state_dict().keys() == other.state_dict().keys()


def plain_head(channels: int, kind: str = "1c2f", out_dim: int = 10) -> LocalHead:
    """The paper's `<a>c<b>f` head on feature maps of `channels` channels (their size does not change it)."""
    return LocalHead(Shape((channels, 8, 8)), int(kind[0]), int(kind[2]), out_dim)


def cut_at(shape: Shape, out_dim: int = 10, **settings) -> HeadSite:
    """The first of two cuts, after unit 0 of output `shape`, on 3 x 16 x 16 images, with these local settings."""
    return HeadSite(0, 2, 0, shape, (shape,), Shape((3, 16, 16)), out_dim, LocalConfig(**settings))


def train_end_to_end_and_k1(plain: nn.Module, sample: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                            context: str = "R1E", **sgd) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Three SGD steps of a backbone by plain backprop and of its K = 1 LocalNetwork copy by local steps:
    (the backbone's parameters, the copy's under the backbone's names)."""
    local = LocalNetwork(copy.deepcopy(plain), LocalConfig(modules=1, context=context), sample)
    assert local.param_counts()["heads"] == 0 and local.param_counts()["context"] == 0
    opt_a = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, **sgd)
    opt_b = torch.optim.SGD(local.parameters(), lr=0.1, momentum=0.9, **sgd)
    for _ in range(3):
        opt_a.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        local_step(local, x, y)
        opt_b.step()
    names = {n.replace("blocks.0.", "units.").replace("objectives.0.", ""): p for n, p in local.named_parameters()}
    return dict(plain.named_parameters()), names


def gradient_leaks(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor, strict: bool = False) -> list[str]:
    """The isolation proof: scaling head j's parameters (so changing module j's loss) must change the gradients of
    module j, head j and the encoders feeding module j only. Returns what else changed, or what should have and
    did not (module j's units; cut j-1's encoders where context is on); [] when every module is isolated.
    `strict`: every parameter of module j's units must change (a head that leaves one without gradient, as a class
    token that carries nothing does the patch projection, trains it not)."""
    def grads(n: LocalNetwork) -> dict[str, torch.Tensor | None]:
        return {k: (p.grad.clone() if p.grad is not None else None) for k, p in n.named_parameters()}

    net.zero_grad()
    local_step(net, x, y)
    base = grads(net)
    leaks = []
    for j in range(net.num_modules):  # the last module's objective, the classifier, too
        other = copy.deepcopy(net)
        other.zero_grad()
        with torch.no_grad():
            for p in other.objectives[j].parameters():
                p.mul_(1.5)
        local_step(other, x, y)
        after = grads(other)
        diff = {n for n in base if (base[n] is None) != (after[n] is None)
                or (base[n] is not None and not torch.equal(base[n], after[n]))}
        own = (f"blocks.{j}.", f"objectives.{j}.", f"context.{j - 1}.")
        leaks += sorted(n for n in diff if not n.startswith(own))
        if not any(n.startswith(f"blocks.{j}.") for n in diff):
            leaks.append(f"module {j}'s units are untouched by its loss")
        elif strict:
            leaks += [f"{n} untrained by module {j}'s loss" for n in base if n.startswith(f"blocks.{j}.")
                      and n not in diff]
        if j > 0 and len(net.context[j - 1].residual) + (net.context[j - 1].image is not None) > 0 and not any(
                n.startswith(f"context.{j - 1}.") for n in diff):
            leaks.append(f"cut {j - 1}'s encoders are untouched by module {j}'s loss")
    return leaks


def assert_no_gradient_crosses_a_cut(net: LocalNetwork, x: torch.Tensor, y: torch.Tensor) -> None:
    """`gradient_leaks` (strict) finds nothing."""
    leaks = gradient_leaks(net, x, y, strict=True)
    assert not leaks, "; ".join(leaks)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A small random batch of 3x16x16 images with labels."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI on input it must refuse: exit 2, one line on stderr, no traceback; returns the line."""
    from contsup.cli import main

    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert lines[0].startswith("contsup: error: ")
    return lines[0]


def snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), to compare the disk before and after."""
    from pathlib import Path

    root = Path(folder)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
