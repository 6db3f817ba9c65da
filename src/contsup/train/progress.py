"""What a training run shows while it runs: the progress bar's fields and one line per epoch."""

from __future__ import annotations

from typing import Any

# The epoch line reports the losses of the last part of the epoch: an epoch mean is dominated by the
# first batches' losses, which can be large while the learning rate warms up.
TAIL = 0.25


def legend(modules: int) -> str:
    """One line naming the progress bar's fields."""
    if modules == 1:
        return "progress bar: loss = the network's training loss on the current batch"
    heads = "the local head" if modules == 2 else f"the {modules - 1} local heads"
    return (f"progress bar: last = loss of the last module (the network's output), local = mean loss of "
            f"{heads}, both on the current batch")


def mean_local(losses: list[float], trains: list[bool] | None = None) -> str | None:
    """The mean of the local losses of modules that train a head of their own (`trains`; all when None); None
    when there is none (module 0 under HPFF's cascade has no head: its loss is a constant 0)."""
    kept = losses if trains is None else [x for x, t in zip(losses, trains, strict=True) if t]
    return f"{sum(kept) / len(kept):.3f}" if kept else None


def postfix(losses: list[float], last: bool = True, trains: list[bool] | None = None) -> dict[str, str]:
    """The progress bar's fields for one step's losses of this process's modules (`last`: with the output's;
    `trains`: which of them train a head of their own, as `mean_local`)."""
    if last and len(losses) == 1:
        return {"loss": f"{losses[0]:.3f}"}
    local = losses[:-1] if last else losses
    fields = {"last": f"{losses[-1]:.3f}"} if last else {}
    mean = mean_local(local, trains[:len(local)] if trains is not None else None)
    return {**fields, **({"local": mean} if mean is not None else {})}


def rate(lr: float) -> str:
    """A learning rate as a user reads it: 0.1, 0.0125, 1.0e-03, 0."""
    return "0" if lr == 0 else f"{lr:.3g}" if abs(lr) >= 0.01 else f"{lr:.1e}"


def epoch_line(row: dict[str, Any], epochs: int, peak: float | None = None, trains: list[bool] | None = None) -> str:
    """The line printed after each epoch (with the schedule's `peak` rate); losses: means over its last quarter
    (`trains` as in `mean_local`)."""
    local = row["local_losses_end"]
    mean = mean_local(local, trains[:len(local)] if trains is not None else None)
    losses = f"loss last {row['train_loss_end']:.3f}" if local else f"loss {row['train_loss_end']:.3f}"
    losses += f" local {mean}" if local and mean is not None else ""
    lr, lr_end = rate(row["lr"]), rate(row.get("lr_end", row["lr"]))
    lr = f"lr {lr}" if lr == lr_end else f"lr {lr}->{lr_end}"  # per-step schedule: at the first and last step
    lr += f" (peak {rate(peak)})" if peak is not None else ""
    parts = [f"epoch {row['epoch']}/{epochs}", lr, f"{losses} (last {TAIL:.0%} of the epoch)",
             f"train error {row['train_error']:.2f}%"]
    if "val_error" in row:
        parts.append(f"val error {row['val_error']:.2f}%")
    if "test_error" in row:
        on = f" (seeded subset of {row['test_images']} images)" if row.get("test_subset") else ""
        parts.append(f"test error {row['test_error']:.2f}%{on}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return "  ".join(parts)


def collapse_note(train_error: float, test_error: float, top_share: float, classes: int) -> str | None:
    """A warning when evaluation collapses against training: the test predictions nearly all one class, or a test
    error near chance while training learns (not overfitting: that leaves the test error well below chance)."""
    chance = 100.0 * (1 - 1 / classes)
    one_class = classes > 2 and top_share >= 0.8
    if not (one_class or (test_error >= chance - 5 and test_error - train_error >= 20)):
        return None
    what = f"{top_share:.0%} of the test predictions are one class" if one_class else \
        f"the test error is near chance ({chance:.0f}%)"
    return (f"warning: {what} (test error {test_error:.2f}%, training error {train_error:.2f}%): in a short run, "
            "BatchNorm's running statistics lag the weights; train for more steps (a smaller batch, more images "
            "or epochs; docs/method.md, training recipe), and check the test data's labels and normalisation")
