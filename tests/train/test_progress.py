from contsup.train.progress import epoch_line, legend, postfix


def test_progress_fields_and_their_legend():
    assert postfix([1.5, 2.5, 0.5]) == {"last": "0.500", "local": "2.000"}
    assert postfix([0.25]) == {"loss": "0.250"}
    assert postfix([1.0, 2.0], last=False) == {"local": "1.500"}  # a pipeline stage without the last module
    assert "last = loss of the last module" in legend(16) and "15 local heads" in legend(16)
    assert "last" not in legend(1)


def test_local_mean_leaves_out_modules_without_a_head():
    """Under HPFF's cascade module 0 has no head (its loss is a constant 0): the local mean is the heads'."""
    assert postfix([0.0, 2.0, 4.0, 0.5], trains=[False, True, True, True]) == {"last": "0.500", "local": "3.000"}
    assert postfix([0.0], last=False, trains=[False]) == {}  # a stage holding module 0 alone
    row = {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "local_losses": [0.0, 2.0], "train_loss_end": 0.5,
           "local_losses_end": [0.0, 2.0], "train_error": 30.0, "test_error": 25.0, "images_per_s": 100.0}
    assert "loss last 0.500 local 2.000 " in epoch_line(row, 3, trains=[False, True, True])
    assert "loss last 0.500 local 1.000 " in epoch_line(row, 3)


def test_epoch_line_labels_the_tail_means():
    row = {"epoch": 1, "lr": 0.1, "train_loss": 9.0, "local_losses": [3.0], "train_loss_end": 0.5,
           "local_losses_end": [0.75], "train_error": 30.0, "test_error": 25.0, "images_per_s": 100.0}
    line = epoch_line(row, 3)
    assert line.startswith("epoch 1/3") and "loss last 0.500 local 0.750 (last 25% of the epoch)" in line
    assert "test error 25.00%" in line and "9.0" not in line


def test_epoch_line_gives_the_rate_at_both_ends_of_the_epoch():
    row = {"epoch": 1, "lr": 0.01, "lr_end": 0.05, "train_loss": 1.0, "local_losses": [], "train_loss_end": 0.5,
           "local_losses_end": [], "train_error": 30.0, "test_error": 25.0, "images_per_s": 100.0}
    assert "lr 0.01->0.05 " in epoch_line(row, 2)
    assert "lr 0.05 " in epoch_line({**row, "lr": 0.05}, 2)  # a constant rate (per-epoch schedule): one value


def test_epoch_line_shows_small_rates_and_the_peak():
    row = {"epoch": 1, "lr": 1e-5, "lr_end": 0.0, "train_loss": 1.0, "local_losses": [], "train_loss_end": 0.5,
           "local_losses_end": [], "train_error": 30.0, "images_per_s": 100.0}
    assert "lr 1.0e-05->0 (peak 1.0e-03) " in epoch_line(row, 2, 1e-3)
    assert "lr 0.0125->0.8 (peak 0.8) " in epoch_line({**row, "lr": 0.0125, "lr_end": 0.8}, 2, 0.8)


def test_one_local_head_is_singular():
    assert "mean loss of the local head," in legend(2) and "1 local heads" not in legend(2)


def test_a_collapsed_evaluation_is_named():
    """The user's bottleneck ResNet (89.06 % test error at 60 % training error, one class predicted): a warning
    naming BatchNorm's running statistics; overfitting (test error well below chance) and a healthy run: none."""
    from contsup.train.progress import collapse_note

    note = collapse_note(60.0, 89.06, 0.99, 10)
    assert note.startswith("warning: 99% of the test predictions are one class") and "BatchNorm" in note
    assert "near chance" in collapse_note(60.0, 89.06, 0.3, 10)
    assert collapse_note(0.0, 45.0, 0.15, 10) is None  # overfitting a small subset
    assert collapse_note(20.0, 24.0, 0.11, 10) is None
    assert collapse_note(85.0, 89.4, 0.2, 10) is None  # nothing learnt yet, on either side
    assert collapse_note(10.0, 30.0, 0.9, 2) is None  # two classes: a share of 0.9 can be real
