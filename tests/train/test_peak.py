import torch

from contsup.profile.runner import ProfileConfig, build, profile_one
from contsup.train.peak import step_peak

CPU = torch.device("cpu")


def test_step_peak_of_a_run_network_matches_profile_and_leaves_it_untouched():
    cfg = ProfileConfig(arch="resnet32", batch_size=16, input_shape=(3, 16, 16), warmup=1, steps=0, device="cpu",
                        flops=False)
    net = build(cfg, 16, "R1E", CPU)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    peak = step_peak(net, 16, CPU)
    assert peak.peak_bytes == profile_one(cfg, 16, "R1E").peak_bytes  # the step `contsup profile` measures
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BatchNorm statistics too
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in net.parameters())


def test_step_peak_of_a_channels_last_run_steps_on_a_channels_last_batch(monkeypatch):
    import contsup.train.peak as memory

    cfg = ProfileConfig(arch="resnet32", batch_size=16, input_shape=(3, 16, 16), warmup=1, steps=0, device="cpu",
                        flops=False, channels_last=True)
    net = build(cfg, 16, "R1E", CPU).to(memory_format=torch.channels_last)
    layouts, real_step = [], memory.local_step

    def step(twin, x, *args):
        layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return real_step(twin, x, *args)

    monkeypatch.setattr(memory, "local_step", step)
    assert step_peak(net, 16, CPU, fmt=torch.channels_last).peak_bytes == profile_one(cfg, 16, "R1E").peak_bytes
    assert layouts == [True]
