"""The parallel cost model's formulas on hand-computed cases, and its command on a tiny network."""

import pytest

from contsup.cli import main
from contsup.distributed.costmodel import (
    Calibration,
    bubble_fraction,
    data_parallel,
    local_pipeline,
    looped_pipeline,
    peak_stash,
    pipeline,
    rank_order,
    replay,
    stashed_micro_batches,
)


def four_units(bandwidth=float("inf")):
    """4 equal units and 4 equal modules (one unit each): per image 1 s forward, 2 s backward, 10 bytes saved,
    8 bytes out, 100 bytes of parameters; a local step 4 s, 20 bytes saved, 8 bytes crossing each cut."""
    return Calibration(batch=1, unit_fwd=[1.0] * 4, unit_bwd=[2.0] * 4, unit_saved=[10.0] * 4, unit_out=[8.0] * 4,
                       unit_params=[100.0] * 4, module_step=[4.0] * 4, module_saved=[20.0] * 4,
                       module_in=[0.0, 8.0, 8.0, 8.0], module_params=[100.0] * 4, bandwidth=bandwidth)


def units(n, bandwidth=float("inf")):
    """`four_units` with n units and modules."""
    return Calibration(batch=1, unit_fwd=[1.0] * n, unit_bwd=[2.0] * n, unit_saved=[10.0] * n, unit_out=[8.0] * n,
                       unit_params=[100.0] * n, module_step=[4.0] * n, module_saved=[20.0] * n,
                       module_in=[0.0] + [8.0] * (n - 1), module_params=[100.0] * n, bandwidth=bandwidth)


def test_gpipe_bubble_is_p_minus_1_over_m_plus_p_minus_1():
    assert bubble_fraction(2, 4) == pytest.approx(1 / 5)
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction(1, 8) == 0


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_step_time_idle_and_memory(schedule):
    # P = 2 stages of 2 units, M = 4 micro-batches of 2 images (batch 8): a micro-batch's forward and backward
    # on a stage takes 2 images x 2 units x 3 s = 12 s; the step (M + P - 1) x 12 = 60 s, 8 images -> 2/15 img/s.
    pred = pipeline(four_units(), schedule, stages=2, batch=8, micro_batches=4)
    assert pred.images_per_s == pytest.approx(8 / 60)
    assert pred.idle == pytest.approx([1 / 5, 1 / 5])  # = bubble_fraction(2, 4)
    # Each stage holds 200 parameter bytes x (weights, gradients, momentum) and saved tensors of 40 bytes a
    # micro-batch (2 images x 2 units x 10): GPipe all 4 on both stages, 1F1B P - p (2 on stage 0, 1 on stage 1);
    # stage 1 also receives a micro-batch's activation and sends its gradient (2 x 2 images x 8 bytes = 32).
    # GPipe: max(600 + 160, 600 + 160 + 32); 1F1B: max(600 + 80, 600 + 40 + 32).
    assert pred.memory_bytes == pytest.approx({"gpipe": 792, "1f1b": 680}[schedule])
    assert stashed_micro_batches(schedule, 1, 2, 4) == {"gpipe": 4, "1f1b": 1}[schedule]


def test_pipeline_pays_its_crossings_on_fill_and_drain():
    # 8 bytes an image at 4 bytes/s: one micro-batch of 2 images crosses in 4 s, twice per stage boundary.
    slow = pipeline(four_units(bandwidth=4.0), "1f1b", stages=2, batch=8, micro_batches=4)
    assert 8 / slow.images_per_s == pytest.approx(60 + 2 * 1 * 4)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_replayed_orders_give_the_closed_form_and_the_stash(schedule):
    # P = 4 balanced stages, M = 8: forward 1 s, backward 2 s a micro-batch; (M + P - 1) x 3 = 33 s.
    orders = [rank_order(schedule, r, 4, 8) for r in range(4)]
    step, busy = replay(orders, lambda kind, s: 1.0 if kind == "F" else 2.0, [0, 1, 2, 3], crossing=0.0)
    assert step == 33 and busy == [24] * 4
    stash = [stashed_micro_batches(schedule, r, 4, 8) for r in range(4)]
    assert [peak_stash(o, lambda s: 1.0) for o in orders] == stash


@pytest.mark.parametrize("ranks,micro_batches", [(2, 4), (4, 8), (4, 4)])
def test_interleaved_bubble_is_p_minus_1_over_2m_plus_p_minus_1(ranks, micro_batches):
    # 2P one-unit stages, 2 images a micro-batch: a rank's two stages take W = 2 x 2 x 3 = 12 s a micro-batch;
    # torch's order replayed gives Narayanan et al.'s M W + (P - 1) W / 2.
    pred = looped_pipeline(units(2 * ranks), "interleaved", ranks, 2 * micro_batches, micro_batches)
    assert 2 * micro_batches / pred.images_per_s == pytest.approx(micro_batches * 12 + (ranks - 1) * 6)
    assert pred.idle == pytest.approx([(ranks - 1) / (2 * micro_batches + ranks - 1)] * ranks)


def test_zbv_fills_the_bubble_with_weight_gradients():
    # P = 2, M = 4, stages 0, 3 on rank 0 and 1, 2 on rank 1; F, I and W each 2 s (2 images x 1 s); traced by
    # hand: the last W ends at 50 s, against 48 s of work a rank (interleaved: 54 s).
    pred = looped_pipeline(units(4), "zbv", 2, 8, 4)
    assert 8 / pred.images_per_s == pytest.approx(50) and pred.idle == pytest.approx([2 / 50, 2 / 50])
    # Each rank: 200 parameter bytes x 3, at most 4 stage-micro-batches of 20 saved bytes, one stage's
    # activation in and gradient out (2 x 2 images x 8 bytes).
    assert pred.memory_bytes == pytest.approx(600 + 80 + 32)
    assert rank_order("zbv", 0, 2, 4)[:4] == [("F", 0, 0), ("F", 0, 1), ("F", 0, 2), ("F", 3, 0)]  # torch's V


def test_local_pipeline_runs_at_its_slowest_stage():
    # 2 stages of 2 modules: 8 images x 2 modules x 4 s = 64 s a batch on each, no bubble once full.
    pred = local_pipeline(four_units(), stages=2, batch=8, inflight=2)
    assert pred.images_per_s == pytest.approx(8 / 64) and pred.idle == [0, 0]
    # Stage 0: 200 x 3 state bytes, one module's saved tensors (8 x 20), 2 messages of 8 x 8 bytes out.
    assert pred.memory_bytes == pytest.approx(600 + 160 + 2 * 64)
    # A link slower than the stages bounds the rate: 8 x 8 bytes at 0.5 bytes/s = 128 s a batch.
    assert local_pipeline(four_units(bandwidth=0.5), 2, 8).images_per_s == pytest.approx(8 / 128)


def test_ddp_computes_a_share_then_all_reduces():
    # 2 ranks, 4 images each: 4 x 4 units x 3 s = 48 s, then 2 x 1/2 x 400 bytes at 100 bytes/s = 4 s.
    pred = data_parallel(four_units(bandwidth=100.0), ranks=2, batch=8)
    assert pred.images_per_s == pytest.approx(8 / 52)
    assert pred.idle == pytest.approx([4 / 52, 4 / 52])
    assert pred.memory_bytes == pytest.approx(400 * 3 + 4 * 40)


def test_parallel_model_command_prints_every_schedule(capsys):
    assert main(["profile", "--parallel-model", "--arch", "resnet8", "--modules", "2", "--contexts", "R1E",
                 "--input", "1x8x8", "--batch-size", "8", "--steps", "1", "--stages", "2,3,4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "loopback" in out
    for schedule in ("gpipe", "1f1b", "interleaved", "zbv", "local", "ddp"):
        assert f"| 2 | {'—' if schedule in ('local', 'ddp') else '8'} | {schedule} |" in out
    assert "| 3 | 8 | — | more stages than units or modules |" in out  # K = 2 local modules
