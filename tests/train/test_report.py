from contsup.train.report import EpochLosses, epoch_line, legend, postfix


def test_epoch_losses_whole_epoch_and_last_quarter():
    losses = EpochLosses()
    assert losses.mean() == []
    for step in range(8):  # a first step far above the rest, as when a run starts at a high learning rate
        losses.add([2.0, 12.0 if step == 0 else 1.0])
    assert losses.mean() == [2.0, 2.375]
    assert losses.mean(0.25) == [2.0, 1.0]  # the last 2 of 8 steps
    assert losses.mean(0.01) == [2.0, 1.0]  # at least one step


def test_progress_fields_and_their_legend():
    assert postfix([1.5, 2.5, 0.5]) == {"last": "0.500", "local": "2.000"}
    assert postfix([0.25]) == {"loss": "0.250"}
    assert "last = loss of the last module" in legend(16) and "15 local heads" in legend(16)
    assert "last" not in legend(1)


def test_epoch_line_labels_the_tail_means():
    row = {"epoch": 1, "lr": 0.1, "train_loss": 9.0, "local_losses": [3.0], "train_loss_end": 0.5,
           "local_losses_end": [0.75], "train_error": 30.0, "test_error": 25.0, "images_per_s": 100.0}
    line = epoch_line(row, 3)
    assert line.startswith("epoch 1/3") and "loss last 0.500 local 0.750 (last 25% of the epoch)" in line
    assert "test error 25.00%" in line and "9.0" not in line
