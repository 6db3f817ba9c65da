import pytest
from tests.conftest import tiny_net

from contsup.distributed.stage import Stage, boundary_sources
from contsup.distributed.topology import Topology, from_sizes, partition
from contsup.errors import ContsupError


@pytest.mark.quick
def test_partition_minimises_the_largest_stage():
    assert partition([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    assert partition([5, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 6)]
    assert partition([1, 2, 3, 4, 5, 6], 3) == [range(0, 3), range(3, 5), range(5, 6)]
    assert partition([3.0], 1) == [range(0, 1)]
    with pytest.raises(ContsupError, match="cannot split"):
        partition([1, 1], 3)


def test_explicit_stage_sizes():
    assert from_sizes([1, 3], 4, 2) == [range(0, 1), range(1, 4)]
    for bad in ([2, 3], [4, 0], [1, 1, 2]):
        with pytest.raises(ContsupError, match="--stage-sizes"):
            from_sizes(bad, 4, 2)


def test_rank_layout_replicas_times_stages():
    t = Topology.build(6, 2, 4)  # 2 replicas x 3 stages
    assert (t.stages, t.replica, t.stage, t.prev_rank, t.next_rank) == (3, 1, 1, 3, 5)
    assert t.stage_ranks(1) == [1, 4]
    assert Topology.build(6, 2, 3).first and Topology.build(6, 2, 5).last
    with pytest.raises(ContsupError, match="does not divide"):
        Topology.build(6, 4, 0)


def test_stages_own_every_state_entry_once():
    net = tiny_net(4, "R2E", recon=None)
    stages = [Stage(net, r) for r in partition([1, 1, 1, 1], 3)]
    for key in net.state_dict():
        assert sum(s.owns(key) for s in stages) == 1, key
    # R2E: s_0 = x goes to the image encoders only; cut k reads s_{k-1}, s_{k-2} (j >= 1).
    assert boundary_sources(net, 1) == [0]
    assert boundary_sources(net, 2) == [0, 1]
    assert boundary_sources(net, 3) == [0, 1, 2]
    assert boundary_sources(tiny_net(4, "R0"), 2) == []


def test_pipeline_outside_torchrun_is_one_clear_error(tmp_path, capsys, monkeypatch):
    from contsup.cli import main

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    args = ["train", "--data", "synthetic", "--arch", "resnet20", "--epochs", "1", "--batch-size", "64", "--pipeline",
            "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs under torchrun" in err[0]
    assert main([*args, "--stage-sizes", "2,x"]) == 2
    assert "--stage-sizes" in capsys.readouterr().err
