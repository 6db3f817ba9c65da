"""Hostile and damaged checkpoints: refused with one line, nothing run, nothing written."""

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from tests.conftest import cli_error, snapshot
from tests.reproduce.tiny import TINY

from contsup.cli import main
from contsup.data import dataset_info
from contsup.train.checkpoint import tensor_digest

TRAIN = ["train", "--data", "synthetic", "--arch", "resnet8", "--train-subset", "64", "--batch-size", "32",
         "--lr", "0.05", "--device", "cpu", "--no-progress", "--modules", "2", "--context", "R1E"]


class RunsCode:
    """Pickles into a call of open(marker, "w"): loading it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch run folder."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return out


def evil_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"format": "contsup-checkpoint", "version": 2, "meta": RunsCode(marker)}, path)


def edited(trained: Path, path: Path, edit) -> Path:
    """A copy of the trained checkpoint changed by `edit(payload)` (its digest kept unless edit resets it)."""
    payload = torch.load(trained / "checkpoint.pt", weights_only=True)
    edit(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def test_code_in_a_checkpoint_never_runs(tmp_path, capsys, trained):
    marker = tmp_path / "marker"
    evil_checkpoint(tmp_path / "evil.pt", marker)
    assert "refusing" in cli_error(capsys, ["eval", str(tmp_path / "evil.pt"), "--device", "cpu"])
    # --resume of a run folder whose checkpoint was replaced
    run = tmp_path / "run"
    run.mkdir()
    evil_checkpoint(run / "checkpoint.pt", marker)
    before = snapshot(run)
    assert "refusing" in cli_error(capsys, [*TRAIN, "--epochs", "2", "--out", str(run), "--resume"])
    assert snapshot(run) == before
    # analyze, next to a good run
    line = cli_error(capsys, ["analyze", str(trained), str(run), "--out", str(tmp_path / "an"), "--no-recon"])
    assert "refusing" in line and not (tmp_path / "an").exists()
    assert not marker.exists()


def test_sweep_resume_never_runs_code(tmp_path, capsys):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    out = tmp_path / "sweep"
    assert main(["reproduce", str(preset), "--out", str(out), "--dry-run"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    marker = tmp_path / "marker"
    from contsup.reproduce.presets import jobs, load_preset

    for job in jobs(load_preset(preset), "cpu", out):
        folder = Path(job.config.out)
        folder.mkdir(parents=True)
        (folder / "settings.json").write_text(json.dumps(job.settings))
        evil_checkpoint(folder / "checkpoint.pt", marker)
    assert main(["reproduce", str(preset), "--out", str(out), "--in-process"]) == 1
    text = capsys.readouterr().out
    assert text.count("FAILED: refusing") == len(names) == 2
    assert not marker.exists()


def test_damaged_weights_are_reported(tmp_path, capsys, trained):
    def damage(p):
        next(v for v in p["model"].values() if v.is_floating_point()).view(-1)[0] += 1.0

    path = edited(trained, tmp_path / "damaged.pt", damage)
    assert "damaged" in cli_error(capsys, ["eval", str(path), "--device", "cpu"])


@pytest.mark.parametrize("edit,message", [
    (lambda p: p["meta"]["run"]["local"].update(modules=3), "plan must list 2 cut units"),
    (lambda p: p["meta"]["run"]["local"].update(context="R0"), "do not fit"),
    (lambda p: p["meta"]["run"].update(arch="resnet14"), "do not fit"),
    (lambda p: p["meta"]["run"]["train"].update(lr="fast"), "lr must be"),
    (lambda p: p["meta"]["run"]["train"].update(lr=float("nan")), "lr must be"),
    (lambda p: p["meta"]["run"]["local"].update(width=-4), "width must be"),
    (lambda p: p["meta"]["run"]["data"].update(name="../../etc"), "unknown dataset"),
    (lambda p: p["meta"]["run"]["data"].update(surprise=1), "unknown setting"),
    (lambda p: p["meta"]["run"]["local"].update(cut_table=5, recon="paper"), "malformed checkpoint"),
    (lambda p: p["meta"]["run"].update(arch=32), "malformed checkpoint"),
    (lambda p: p["meta"]["run"].update(arch="resnet999998"), "unknown architecture"),
    (lambda p: p["meta"]["dataset"].update(size=10**6), "dataset description"),
    (lambda p: p["meta"].update(hook="x"), "unknown key"),
    (lambda p: p.update(epoch="3"), "malformed checkpoint"),
    (lambda p: p.update(model=[1, 2]), "malformed checkpoint"),
    (lambda p: p.update(version=1), "version"),
])
def test_malformed_metadata_one_line(edit, message, tmp_path, capsys, trained):
    path = edited(trained, tmp_path / "bad.pt", edit)
    assert message in cli_error(capsys, ["eval", str(path), "--device", "cpu"])


def test_eval_never_downloads_or_writes_where_the_checkpoint_says(tmp_path, capsys, trained, monkeypatch):
    monkeypatch.setenv("CONTSUP_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    elsewhere = tmp_path / "elsewhere"

    def to_cifar(p):  # synthetic images have CIFAR-10's shape, so the weights still fit
        p["meta"]["run"]["data"].update(name="cifar10", root=str(elsewhere), download=True)
        p["meta"]["dataset"] = {k: list(v) if isinstance(v, tuple) else v
                                for k, v in dataset_info("cifar10").__dict__.items()}

    path = edited(trained, tmp_path / "cifar.pt", to_cifar)
    before = snapshot(tmp_path)
    assert "cifar10 not found" in cli_error(capsys, ["eval", str(path), "--device", "cpu"])
    assert snapshot(tmp_path) == before and not elsewhere.exists()


def test_digest_covers_names_and_values():
    a = {"w": torch.ones(3), "b": torch.zeros(2)}
    assert tensor_digest(a) == tensor_digest(dict(reversed(a.items())))
    assert tensor_digest(a) != tensor_digest({"w": torch.ones(3), "c": torch.zeros(2)})
    assert tensor_digest(a) != tensor_digest({"w": torch.ones(3), "b": torch.zeros(2, dtype=torch.float64)})


def _rezip(src: Path, dst: Path, extra: bytes = b"") -> None:
    """`src`'s archive with deflated entries (and one deflated entry of `extra`), as torch never writes."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info.filename))
        if extra:
            b.writestr(a.infolist()[0].filename.split("/")[0] + "/data/999", extra)


def _retyped(payload: dict, dtype: torch.dtype, digest: bool = True) -> None:
    """The first float weight converted to `dtype`, the digest recomputed (a forged but consistent file)."""
    name = next(k for k, v in payload["model"].items() if v.is_floating_point())
    payload["model"][name] = payload["model"][name].to(dtype)
    if digest:
        payload["model_sha256"] = tensor_digest(payload["model"])


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _write(kind: str, trained: Path, path: Path) -> None:
    """One hostile checkpoint of the corpus at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = trained / "checkpoint.pt"
    if kind == "deflated":
        _rezip(source, path)
    elif kind == "inflates":  # a small file whose entry inflates to 64 MiB
        _rezip(source, path, bytes(64 << 20))
    elif kind == "legacy":
        torch.save(torch.load(source, weights_only=True), path, _use_new_zipfile_serialization=False)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "noise":
        path.write_bytes(bytes(range(256)) * 64)
    else:
        edits = {
            "sparse": lambda p: p["model"].update(w=torch.eye(3).to_sparse()),
            "meta": lambda p: p["model"].update(w=torch.empty(3, device="meta")),
            "int64": lambda p: _retyped(p, torch.int64),
            "complex": lambda p: _retyped(p, torch.complex64, digest=False),
            "float64": lambda p: _retyped(p, torch.float64),
            "nested": lambda p: p["meta"]["run"].update(note=_nested(200)),
            "wide": lambda p: p["meta"]["run"]["local"].update(width=65_536),
            "auglocal": lambda p: p["meta"]["run"].update(arch="resnet1202") or p["meta"]["run"]["local"].update(
                modules=600, head="auglocal", aux_depth=64),
            "convs": lambda p: p["meta"]["run"]["local"].update(modules=16, head="2c2f", widen=64.0, width=2),
        }
        edited(trained, path, edits[kind])


CHECKPOINT_CORPUS = [
    ("deflated", "zip entries are compressed"), ("inflates", "zip entries are compressed"),
    ("legacy", "not a contsup checkpoint"), ("fifo", "not a regular file"), ("noise", "not a contsup checkpoint"),
    ("sparse", "sparse, meta"), ("meta", "sparse, meta"), ("complex", "of dtype torch.complex64"),
    ("int64", "of another dtype"), ("float64", "of another dtype"), ("nested", "nested deeper than"),
    ("wide", "would hold about"), ("auglocal", "599 AugLocal heads of up to 64 blocks"),
    ("convs", "2 conv layers of 4096 channels would hold about"),
]


@pytest.mark.parametrize("kind,message", CHECKPOINT_CORPUS)
def test_hostile_checkpoint_corpus(kind, message, tmp_path, capsys, trained):
    """eval of the file and --resume of its folder: exit 2, one line, the folder untouched, nothing new elsewhere."""
    run = tmp_path / "run"
    _write(kind, trained, run / "checkpoint.pt")
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, ["eval", str(run / "checkpoint.pt"), "--device", "cpu"])
    resumed = cli_error(capsys, [*TRAIN, "--epochs", "2", "--out", str(run), "--resume"])
    sized = kind in ("wide", "auglocal", "convs")  # --resume compares the settings first
    assert message in resumed or (sized and "--resume with other settings" in resumed), resumed
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _adamw_steps(p: dict, value: float) -> None:
    for state in p["optimizer"]["state"].values():
        state["step"].fill_(value)


@pytest.mark.parametrize("edit,message", [
    (lambda p: p.update(train_time=float("inf")), "not finite"),
    (lambda p: p.update(train_time=float("nan")), "not finite"),
    (lambda p: _adamw_steps(p, -5.0), "optimizer state does not fit"),
    (lambda p: _adamw_steps(p, 2.5), "optimizer state does not fit"),
])
def test_resume_reads_back_its_counters(edit, message, tmp_path, capsys):
    """Counters a checkpoint carries (the training time, AdamW's step count) are checked before they are used."""
    run = tmp_path / "run"
    assert main([*TRAIN, "--optimizer", "adamw", "--lr", "0.02", "--epochs", "1", "--out", str(run)]) == 0
    (run / "summary.json").unlink()
    edited(run, run / "checkpoint.pt", edit)
    before = snapshot(tmp_path)
    line = cli_error(capsys, [*TRAIN, "--optimizer", "adamw", "--lr", "0.02", "--epochs", "2", "--out", str(run),
                              "--resume"])
    assert message in line and snapshot(tmp_path) == before


def test_stored_runs_with_settings_a_new_run_refuses_stay_readable(tmp_path, capsys, trained):
    """Refusals of settings that do nothing, or of a warm-up above the peak, apply where a run starts: eval reads
    a run that stored them."""
    def edit(p):
        p["meta"]["run"]["local"].update(aux_depth=3)
        p["meta"]["run"]["train"].update(warmup_start_lr=1.0, optimizer="sgd", momentum=0.9)

    path = edited(trained, tmp_path / "old.pt", edit)
    assert main(["eval", str(path), "--device", "cpu"]) == 0


def test_stored_settings_that_do_nothing_resume_without_them(tmp_path, capsys):
    """A K = 1 run that stored head settings it never read (before they were refused) resumes by the command
    without them; naming them again is refused with the way out."""
    run = tmp_path / "run"
    e2e = [*TRAIN, "--modules", "1", "--out", str(run)]
    assert main([*e2e, "--epochs", "1"]) == 0
    (run / "summary.json").unlink()

    def edit(p):
        p["meta"]["run"]["local"].update(head="0c1f", local_init="kaiming", recon_dataset="cifar10")

    edited(run, run / "checkpoint.pt", edit)
    assert "head, recon_dataset, local_init (end-to-end at K = 1" in cli_error(
        capsys, [*e2e, "--epochs", "2", "--resume", "--head", "0c1f", "--local-init", "kaiming",
                 "--recon-dataset", "cifar10"])
    assert main([*e2e, "--epochs", "2", "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
