import sys

import pytest

from contsup.errors import ContsupError
from contsup.train.tensorboard import TensorBoardLog

ROWS = [{"epoch": e, "lr": 0.1 / e, "train_loss": 2.0 / e, "local_losses": [1.5 / e, 1.2 / e], "train_error": 50.0,
         "test_error": 40.0 / e} for e in (1, 2)]


def test_writes_each_module_loss_error_and_lr(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = TensorBoardLog(tmp_path / "tb")
    for row in ROWS:
        log.log(row)
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"loss/module_01", "loss/module_02", "loss/module_03", "error/train", "error/test", "lr"}
    assert [(s.step, round(s.value, 4)) for s in events.Scalars("loss/module_03")] == [(1, 2.0), (2, 1.0)]
    assert [round(s.value, 4) for s in events.Scalars("loss/module_01")] == [1.5, 0.75]
    assert [round(s.value, 4) for s in events.Scalars("error/test")] == [40.0, 20.0]


def test_missing_package_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(ContsupError, match=r"contsup\[tensorboard\]"):
        TensorBoardLog(tmp_path / "tb")
