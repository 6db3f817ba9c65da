"""What a run folder holds, and the rules that keep one folder to one run (docs/security.md).

A run folder holds exactly one run: `checkpoint.pt` (the last finished epoch), `metrics.jsonl` (one
row per finished epoch, rewritten from the checkpoint on resume), `summary.json` (written when the
run ends) and, in sweeps, `settings.json`. One process writes it at a time: it holds an advisory lock
on `.lock` (the OS releases it when the process dies) from before the folder is checked to the end.
A new run refuses a folder that holds any of the first three; `--resume` continues only the same
settings (only the place it runs on, and a larger number of epochs, may change), completes the
summary of a run killed after its last checkpoint, and refuses a finished run. Contsup never writes
through a symbolic link it did not create: a run file that is a link is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from contsup.config import PLACE, TrainConfig
from contsup.errors import ContsupError
from contsup.files import remove_stale_temps, tmp_suffix
from contsup.train.optim import make_optimizer, param_names, settings_of

CHECKPOINT, METRICS, SUMMARY, SETTINGS = "checkpoint.pt", "metrics.jsonl", "summary.json", "settings.json"
LOCK = ".lock"
RUN_FILES = (CHECKPOINT, METRICS, SUMMARY)
# Names contsup writes in a run folder: none of them may be a symbolic link.
WRITTEN = (*RUN_FILES, SETTINGS, LOCK, "tensorboard")
_HELD: dict[Path, int] = {}  # run folders whose lock this process holds, and the thread that holds each


def _busy(folder: Path, fd: int) -> ContsupError:
    """The one line for a folder whose lock another process holds (its pid, as that process wrote it)."""
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return ContsupError(f"{folder} is being written by another contsup process{f' (pid {pid})' if pid else ''}; "
                        "wait for it to end, or choose another --out")


@contextlib.contextmanager
def hold_run_folder(out: str | Path | None, reentrant: bool = False) -> Iterator[None]:
    """Hold the run folder's write lock (`<out>/.lock`, created with the folder if need be) for the block.

    A second writer gets one line. On leaving, the lock file is removed, and the folder too if this
    call created it and nothing else was written into it (a refused run leaves no trace). `reentrant`:
    where this thread holds the lock already (the command line's run, then its Trainer), do nothing; a
    second Trainer on another thread of this process is refused like another process.
    """
    if out is None:
        yield
        return
    folder = Path(out)
    if str(out) == "":
        raise ContsupError("--out is empty; name a run folder")
    if reentrant and _HELD.get(folder.resolve()) == threading.get_ident():
        yield
        return
    if os.path.lexists(folder) and not folder.is_dir():
        raise ContsupError(f"run folder {folder} is a file; choose another --out")
    created = not os.path.lexists(folder)
    lock = folder / LOCK
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ContsupError(f"{lock} is a symbolic link; contsup writes no run file through a link") from None
        reason = err.strerror or err
        raise ContsupError(f"cannot write to run folder {folder}: {reason}; choose another --out") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ContsupError(f"{lock} is not a regular file; remove it (contsup writes its lock there)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(folder, fd) from None
        try:
            moved = os.fstat(fd).st_ino != os.lstat(lock).st_ino
        except FileNotFoundError:
            moved = True
        if moved:  # the holder removed (or replaced) the file between our open and lock
            raise ContsupError(f"{folder} is being written by another contsup process; try again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held = folder.resolve()
        _HELD[held] = threading.get_ident()
        try:
            yield
        finally:
            _HELD.pop(held, None)
            lock.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: this call made it and the run was refused
    finally:
        os.close(fd)


# Writes into a run folder in progress in this process; a pipeline rank's Ctrl-C waits for them (`interrupted`).
WRITES = {"open": 0, "interrupted": 0}


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """A failed write into the run folder (disk full, a file-size limit) as one line saying what the folder keeps;
    an interrupt deferred while it wrote is raised again when it ends."""
    WRITES["open"] += 1
    try:
        yield
    except OSError as err:
        raise ContsupError(f"cannot write to run folder {folder}: {err.strerror or err}; it keeps the last "
                           "finished epoch's checkpoint: make room, then continue with --resume "
                           "(Trainer.resume in Python)") from None
    finally:
        WRITES["open"] -= 1
        if not WRITES["open"] and WRITES["interrupted"]:
            signal.raise_signal(signal.SIGINT)


def continue_hint(out: str | Path | None) -> str:
    """What an interrupted run left, and how to continue it."""
    if out is None or not os.path.isfile(os.path.join(out, CHECKPOINT)):
        return "no epoch finished, nothing was kept; run the command again"
    return f"{out} keeps the last finished epoch: continue with the same command and --resume"


def check_not_written(folder: str | Path) -> None:
    """Refuse to read a run folder while a contsup process holds its write lock (its files are changing)."""
    lock = Path(folder) / LOCK
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as err:
        raise ContsupError(f"cannot read run folder {folder}: its {LOCK} is unreadable ({err.strerror or err})") \
            from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(Path(folder), fd) from None
    finally:
        os.close(fd)


def check_run_folder(out: str | Path | None, resume: bool) -> None:
    """Refuse, before anything is loaded or written, a run folder this run cannot use."""
    if out is None:
        if resume:
            raise ContsupError("--resume needs a run folder (--out)")
        return
    if str(out) == "":
        raise ContsupError("--out is empty; name a run folder")
    folder = Path(out)
    try:
        if os.path.lexists(folder) and not folder.is_dir():
            raise ContsupError(f"run folder {folder} is a file; choose another --out")
        links = [name for name in WRITTEN if name != LOCK and (folder / name).is_symlink()]
        if links:
            raise ContsupError(f"{folder / links[0]} is a symbolic link; contsup writes no run file through a link "
                               "(remove it, or choose another --out)")
        if resume and not os.path.lexists(folder / CHECKPOINT):
            raise ContsupError(f"nothing to resume: no {CHECKPOINT} in {folder}")
        if resume and not (folder / CHECKPOINT).is_file():
            raise ContsupError(f"{CHECKPOINT} in {folder} is not a regular file; contsup reads no other")
        held = [name for name in RUN_FILES if os.path.lexists(folder / name)]
    except OSError as err:
        raise ContsupError(f"cannot use run folder {folder}: {err.strerror or err}; choose another --out") from None
    if resume:
        return
    if held:
        raise ContsupError(f"{folder} already holds a run ({', '.join(held)}): pass --resume to continue it, "
                           "or choose another --out")


def open_run_folder(out: str | Path) -> None:
    """Create the run folder, prove it writable with the longest file name a run writes, drop stale temporaries."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=CHECKPOINT + ".", suffix=tmp_suffix(), dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or err
        raise ContsupError(f"cannot write to run folder {folder}: {reason}; choose another --out") from None
    remove_stale_temps(folder, (CHECKPOINT, METRICS, SUMMARY, SETTINGS))


def _flat(run: dict[str, Any]) -> dict[str, Any]:
    """`{"train": {"lr": ..}}` -> `{"train.lr": ..}`, values in their JSON form (tuples as lists)."""
    out: dict[str, Any] = {}
    for key, value in run.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return json.loads(json.dumps(out))


def changed_settings(stored: dict[str, Any], now: dict[str, Any], idle: Iterable[str] = ()) -> list[str]:
    """`name old -> new` for every setting (place, epochs and the `idle` ones, which neither run reads aside) that
    differs between two run configs."""
    old, new = _flat(stored), _flat(now)
    skip = set(PLACE) | {"train.epochs"} | set(idle)
    return [f"{k.split('.')[-1]} {old.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(set(old) | set(new)) if k not in skip and old.get(k) != new.get(k)]


def check_resume(path: Path, payload: dict[str, Any], stored: dict[str, Any], now: dict[str, Any],
                 epochs: int, idle: Iterable[str] = ()) -> None:
    """Refuse a resume that would change what the run computes (settings in `idle` compute nothing), or continue
    a finished run.

    A run that trained all its epochs but has no summary.json (killed between its last checkpoint and
    its summary) passes: resuming it trains nothing and writes the summary from the checkpoint.
    """
    changed = changed_settings(stored, now, idle)
    if changed:
        raise ContsupError(f"--resume with other settings than the run in {path.parent}: {'; '.join(changed)}; "
                           "pass the run's settings, or choose another --out")
    done = payload["epoch"]
    history = payload["history"]
    ok = len(history) == done and all(
        isinstance(r, dict) and r.get("epoch") == i + 1 and isinstance(r.get("test_error", 0.0), (int, float))
        and math.isfinite(r.get("test_error", 0.0)) for i, r in enumerate(history))  # eval_every skips epochs
    if not ok:
        raise ContsupError(f"{path}: malformed checkpoint (its history does not list epochs 1..{done})")
    target = stored.get("train", {}).get("epochs") if isinstance(stored.get("train"), dict) else None
    if done >= epochs and not (done >= (target or math.inf) and summary_missing(path.parent)):
        raise ContsupError(f"the run in {path.parent} is finished ({done} of {epochs} epochs): nothing to resume; "
                           "pass a larger --epochs to train on, or choose another --out")


def summary_missing(folder: Path) -> bool:
    """Whether a run folder lacks its summary.json (a finished run's summary is then rebuilt on resume)."""
    return not os.path.lexists(folder / SUMMARY)


def check_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """Refuse weights that do not fit `net` (other K, arch, context mode, dtype ...) or that are not finite.

    `net` may live on the meta device: its shapes are then checked before any of its memory is allocated.
    """
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    dtypes = [k for k in expected if k in state and state[k].dtype != expected[k].dtype]
    if missing or unexpected or shapes or dtypes:
        parts = [f"{len(v)} {name}, e.g. {v[0]}" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes),
                  ("of another dtype", dtypes)) if v]
        raise ContsupError(f"{path}: its weights do not fit {what}: "
                           + "; ".join(parts))
    bad = [k for k, t in state.items() if t.is_floating_point() and not t.is_meta  # a meta tensor holds no value
           and not bool(torch.isfinite(t).all())]
    if bad:
        raise ContsupError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinity, e.g. {bad[0]}")


def check_checkpoint_fits(net: torch.nn.Module, payload: dict[str, Any], cfg: TrainConfig, path: str | Path,
                          what: str) -> None:
    """A checkpoint's weights and optimizer state fit `net` and the optimizer that `cfg` builds for it."""
    check_weights(net, payload["model"], path, what)
    check_optimizer(payload["optimizer"], net, make_optimizer(net.named_parameters(), cfg), path)


def check_optimizer(state: dict[str, Any], net: torch.nn.Module, fresh: torch.optim.Optimizer,
                    path: str | Path) -> None:
    """Refuse an optimizer state that does not fit the network or differs from the run's optimizer settings.

    `state` is a named state (`contsup.train.optim`); `fresh` is the optimizer the run builds. Every group
    must hold the settings of the fresh group of its name (momentum, dampening, weight decay, Nesterov,
    maximize, ... all but the rate the schedule sets), the groups must partition the network's parameters,
    and each state tensor (SGD's momentum buffer, AdamW's moments) must be a dense floating tensor of its
    parameter's dtype and shape (AdamW's step count: a scalar).
    """
    params = dict(net.named_parameters())
    names = param_names(net)
    keys = {"momentum_buffer"} if isinstance(fresh, torch.optim.SGD) else {"step", "exp_avg", "exp_avg_sq"}
    expected = {g["name"]: (settings_of(g), {names[id(p)] for p in g["params"]}) for g in fresh.param_groups}

    def fits() -> bool:
        groups, per = state.get("param_groups"), state.get("state")
        if not (isinstance(groups, list) and isinstance(per, dict) and len(groups) == len(expected)):
            return False
        for g in groups:
            want = expected.get(g.get("name")) if isinstance(g, dict) else None
            if want is None or settings_of(g) != want[0] or not isinstance(g.get("params"), list) \
                    or len(g["params"]) != len(want[1]) or set(g["params"]) != want[1]:
                return False
        for name, s in per.items():
            if name not in params or not isinstance(s, dict) or set(s) - keys:
                return False
            for key, t in s.items():
                shape = () if key == "step" else params[name].shape
                if not (isinstance(t, torch.Tensor) and t.layout == torch.strided and t.dtype == params[name].dtype
                        and t.shape == shape):
                    return False
                if t.is_meta:  # shapes only (a meta tensor holds no value)
                    continue
                if not bool(torch.isfinite(t).all()) or (
                        key == "step" and not (0 <= float(t) <= 2**40 and float(t) == int(t))):  # AdamW's count
                    return False
        return True

    if not fits():
        groups = state.get("param_groups") if isinstance(state.get("param_groups"), list) else []
        stored = {k for g in groups if isinstance(g, dict) for k in settings_of(g)}
        known = {k for g in fresh.param_groups for k in settings_of(g)}
        if stored and stored != known:  # each PyTorch version writes its own set of optimizer settings
            raise ContsupError(f"{path}: its optimizer settings {', '.join(sorted(stored ^ known))} are known to only "
                               f"one of this PyTorch ({torch.__version__}) and the one that wrote the checkpoint; "
                               "resume it with that PyTorch version")
        raise ContsupError(f"{path}: malformed checkpoint (its optimizer state does not fit the network "
                           "or the run's optimizer settings)")
