"""Bad settings on the command line: exit 2, one line, nothing written."""

import pytest
import torch
from tests.conftest import cli_error, snapshot
from tests.test_files import TEXT_CORPUS, hostile_text

TRAIN = ["train", "--data", "synthetic", "--arch", "resnet8", "--train-subset", "64", "--batch-size", "32",
         "--lr", "0.05", "--device", "cpu", "--no-progress", "--epochs", "1", "--modules", "2"]


BAD_SETTINGS = [
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "1e308"], "lr must be a finite number > 0 and <= 1000"),
    (["--lr", "-1"], "lr must be"),
    (["--momentum", "-0.5"], "momentum (Nesterov SGD) must be"),
    (["--momentum", "0"], "momentum (Nesterov SGD) must be"),
    (["--momentum", "1.5"], "momentum (Nesterov SGD) must be"),
    (["--weight-decay=-1e-4"], "weight_decay must be"),
    (["--weight-decay", "nan"], "weight_decay must be"),
    (["--clip-grad=-1"], "clip_grad must be"),
    (["--width", "4096", "--widen", "32"], "width x widen must be at most"),
    (["--clip-grad", "inf"], "clip_grad must be"),
    (["--context-lr-scale", "0"], "context_lr_scale must be"),
    (["--seed", "-1"], "seed must be"),
    (["--epochs", "0"], "epochs must be"),
    (["--batch-size", "0"], "batch_size must be"),
    (["--warmup-epochs", "-1"], "warmup_epochs must be"),
    (["--width", "0"], "width must be"),
    (["--widen", "0"], "widen must be"),
    (["--widen", "0.001"], "no channels"),
    (["--val-split", "-1"], "val_split must be"),
    (["--device", "bogus"], "unknown device"),
    (["--arch", "resnet9"], "unknown architecture"),
    (["--train-subset", "16"], "no training step would run"),
    (["--batch-size", "128"], "no training step would run"),
    (["--arch", "resnet1208"], "unknown architecture"),
    (["--lr", "-0.1"], "lr must be"),
    (["--eval-subset", "100000"], "eval_subset=100000 exceeds"),
    (["--val-split", "600"], "leaves no training images"),
]


@pytest.mark.parametrize("flags,message", BAD_SETTINGS)
def test_bad_setting(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in cli_error(capsys, [*TRAIN, *flags, "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("mode,flags,message", [
    *(("--dry-run", f, m) for f, m in BAD_SETTINGS),
    *(("--print-config", f, m) for f, m in BAD_SETTINGS if m != "no channels"),  # the network's: the dry run's
])
def test_bad_setting_refused_without_running(mode, flags, message, tmp_path, capsys):
    """--dry-run and --print-config refuse what the run refuses (its settings and sizes) through the same checks."""
    out = tmp_path / "run"
    assert message in cli_error(capsys, [*TRAIN, *flags, "--out", str(out), mode])
    assert not out.exists()


def test_dry_run_refuses_a_finished_run_and_resume_of_nothing(tmp_path, capsys):
    from contsup.cli import main

    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    before = snapshot(tmp_path)
    assert "already holds a run" in cli_error(capsys, [*TRAIN, "--out", str(out), "--dry-run"])
    assert "is finished" in cli_error(capsys, [*TRAIN, "--out", str(out), "--dry-run", "--resume"])
    assert "nothing to resume" in cli_error(capsys, [*TRAIN, "--out", str(tmp_path / "new"), "--dry-run",
                                                     "--resume"])
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_build(tmp_path, capsys):
    assert "no CUDA device" in cli_error(capsys, [*TRAIN, "--device", "cuda", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_out_that_cannot_hold_a_run(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    before = snapshot(tmp_path)
    assert "is a file" in cli_error(capsys, [*TRAIN, "--out", str(tmp_path / "file")])
    assert "cannot" in cli_error(capsys, [*TRAIN, "--out", str(tmp_path / ("x" * 300))])
    assert "cannot write to run folder" in cli_error(capsys, [*TRAIN, "--out", str(tmp_path / "file" / "run")])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags,message", [
    (["--input", "0x32x32"], "channels must be"),
    (["--input", "3x-2x32"], "height and width"),
    (["--input", "3x100000x100000"], "height and width"),
    (["--classes", "1"], "--classes must be"),
    (["--seed", "-3"], "seed must be"),
])
def test_profile_degenerate_sizes(flags, message, tmp_path, capsys):
    argv = ["profile", "--arch", "resnet8", "-K", "2", "--contexts", "R1E", "--batch-size", "2", "--steps", "1",
            "--out", str(tmp_path / "prof"), *flags]
    assert message in cli_error(capsys, argv)
    assert not (tmp_path / "prof").exists()


@pytest.mark.parametrize("kind,message", TEXT_CORPUS)
def test_config_file_that_is_no_text(kind, message, tmp_path, capsys):
    path = hostile_text(tmp_path, kind)
    out = tmp_path / "run"
    before = snapshot(tmp_path)
    assert message in cli_error(capsys, [*TRAIN, "--config", path, "--out", str(out)])
    assert snapshot(tmp_path) == before and not out.exists()


def test_profile_that_cannot_fit_memory(tmp_path, capsys):
    line = cli_error(capsys, ["profile", "--arch", "resnet8", "-K", "2", "--contexts", "R1E", "--batch-size", "100000",
                              "--input", "3x4096x4096", "--device", "cpu", "--out", str(tmp_path / "prof")])
    assert "needs at least" in line and "lower --batch-size" in line
    assert not (tmp_path / "prof").exists()


@pytest.mark.parametrize("argv", [
    ["runs", "RUNS", "--out", "FILE"],
    ["runs", "RUNS", "--out", "FILE/sub"],
    ["analyze", "RUNS", "--out", "FILE"],
    ["profile", "--arch", "resnet8", "-K", "2", "--out", "FILE"],
    ["reproduce", "table1", "--out", "FILE"],
    ["reproduce", "table1", "--out", "OUT", "--results", "FILE"],
    ["reproduce", "table1", "--out", "OUT", "--data-dir", "FILE"],
    ["train", *TRAIN[1:], "--out", ""],
    ["train", *TRAIN[1:], "--out", "OUT", "--data-dir", "FILE"],
    ["eval", "RUNS", "--data-dir", "FILE"],
])
def test_output_named_as_a_file_refused_before_work(argv, tmp_path, capsys):
    """Every --out, --results and --data-dir is checked before anything is read, trained or written."""
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "runs").mkdir()
    places = {"FILE": str(tmp_path / "file"), "FILE/sub": str(tmp_path / "file" / "sub"),
              "RUNS": str(tmp_path / "runs"), "OUT": str(tmp_path / "out")}
    before = snapshot(tmp_path)
    line = cli_error(capsys, [places.get(a, a) for a in argv])
    assert "is a file" in line or "not a folder" in line or "is empty" in line or "must name a folder" in line, line
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["file", "runs"]


@pytest.mark.parametrize("flags,message", [
    (["--weight-decay", "1e308"], "weight_decay must be"),
    (["--cuts", ""], "lists no cut"),
    (["--cuts", ","], "lists no cut"),
    (["--cuts", "balanced", "--cut-table", "equal-units"], "name two cut rules"),
    (["--aux-depth", "3"], "aux_depth (no AugLocal head"),
    (["--aux-depth", "3", "--print-config"], "aux_depth (no AugLocal head"),
    (["--modules", "1", "--head", "0c1f", "--local-init", "kaiming"], "head, local_init (end-to-end at K = 1"),
    (["--modules", "1", "--context-lr-scale", "0.5", "--print-config"], "context_lr_scale (end-to-end at K = 1"),
    (["--recon-dataset", "cifar10"], "recon_dataset (no reconstruction"),
    (["--recon", "1,1,1,1", "--recon-dataset", "cifar10"], "recon_dataset (recon gives its own weights"),
    (["--man-scale"], "man_scale (MAN is off"),
    (["--eval-subset", "50"], "eval_subset (the last epoch is the only one evaluated"),
    (["--epochs", "3", "--eval-every", "3", "--eval-subset", "50"], "eval_subset (the last epoch is the only one"),
    (["--man-ema-start", "random"], "man_ema_start (MAN is off"),
    (["--optimizer", "adamw", "--momentum", "0.5"], "adamw does not read it"),
    (["--context", "R0", "--context-lr-scale", "0.5"], "no context encoders"),
    (["--modules", "600", "--arch", "resnet1202", "--head", "auglocal", "--aux-depth", "64"], "AugLocal heads"),
    (["--width", "65536"], "would hold about"),
    (["--head", "2c2f", "--widen", "64", "--width", "2", "--modules", "16"], "2 conv layers of 4096 channels would"),
    (["--micro-batches", "1000000000"], "micro_batches must be"),
    (["--micro-batches", "2"], "micro_batches (the schedules' (gpipe, 1f1b, interleaved, zbv); parallel local"),
    (["--warmup-steps", "1000000000", "--schedule", "step"], "warmup_steps must be at most"),
    (["--lean-norm", "--bf16"], "drop --bf16 or --lean-norm"),
    (["--lean-norm", "--parallel", "ddp", "--ranks", "2"], "lean_norm (BatchNorm is synchronised across ranks"),
])
@pytest.mark.parametrize("mode", [[], ["--dry-run"]])
def test_settings_unbounded_or_doing_nothing(flags, message, mode, tmp_path, capsys):
    """Sizes are bounded before anything is built, and a setting the network never reads is refused."""
    out = tmp_path / "run"
    assert message in cli_error(capsys, [*TRAIN, *flags, "--out", str(out), *mode])
    assert not out.exists()


def test_cuts_take_a_rule_by_name_as_profile_does(capsys):
    from contsup.cli import main

    argv = [*TRAIN, "--modules", "3", "--dry-run"]
    assert main([*argv, "--cuts", "balanced"]) == 0
    by_cuts = capsys.readouterr().out
    assert main([*argv, "--cut-table", "balanced"]) == 0
    assert capsys.readouterr().out == by_cuts
    assert main([*argv, "--cuts", "balanced", "--print-config"]) == 0
    assert 'cut_table = "balanced"' in capsys.readouterr().out
    assert "did you mean balanced?" in cli_error(capsys, [*argv, "--cuts", "balance"])


@pytest.mark.parametrize("text,message", [
    ("lr = 0.1\n[train]\nlr = 0.2\n", "both set train.lr"),
    ('dataset = "synthetic"\ndata = "synthetic"\n', "both set data.name"),
    ("lrr = 0.1\n", "did you mean lr"),
    ("[train]\nlrr = 0.1\n", "did you mean train.lr"),
    ("seed = 1180591620717411303424\n", "seed must be"),
    ("a" + ".a" * 3000 + " = 1\n", "unknown setting 'a'"),
])
@pytest.mark.parametrize("mode", ["--dry-run", "--print-config"])
def test_config_files_resolved_silently_or_deeply(text, message, mode, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(text)
    line = cli_error(capsys, [*TRAIN, "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), mode])
    assert message in line and len(line) < 400, line


@pytest.mark.parametrize("flags,message", [
    (["--threads", "-1"], "--threads must be"),
    (["--threads", "100000"], "--threads must be"),
    (["--steps", "1000000000"], "--steps must be"),
    (["--warmup", "1000000000"], "--warmup must be"),
])
def test_profile_bounds(flags, message, tmp_path, capsys):
    argv = ["profile", "--arch", "resnet8", "-K", "2", "--contexts", "R1E", "--batch-size", "2",
            "--out", str(tmp_path / "prof"), *flags]
    assert message in cli_error(capsys, argv)
    assert not (tmp_path / "prof").exists()


def test_data_fetch_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    line = cli_error(capsys, ["data", "fetch", "cifar10", "--dir", str(tmp_path / "file" / "cifar")])
    assert "is a file, not a folder" in line and (tmp_path / "file").read_text() == "keep me"


def test_a_lock_that_is_a_fifo(tmp_path, capsys):
    import os

    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / ".lock")
    assert "is not a regular file" in cli_error(capsys, [*TRAIN, "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG"])
def test_a_full_disk_while_checkpointing_is_one_line(code, tmp_path, capsys, monkeypatch):
    """The write fails (disk full, a file-size limit): one line, and the run folder keeps its last checkpoint."""
    import errno

    from contsup.cli import main
    from contsup.train import checkpoint

    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    kept = (out / "checkpoint.pt").read_bytes()

    def full(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    import os
    monkeypatch.setattr(checkpoint.torch, "save", full)
    line = cli_error(capsys, [*TRAIN, "--epochs", "2", "--out", str(out), "--resume"])
    assert "cannot write to run folder" in line and os.strerror(getattr(errno, code)) in line and "--resume" in line
    assert (out / "checkpoint.pt").read_bytes() == kept
    assert [p.name for p in out.iterdir() if "tmp" in p.name] == []


@pytest.mark.parametrize("mode", [[], ["--dry-run"]])
def test_a_network_the_memory_cannot_hold_is_one_line(mode, tmp_path, capsys, monkeypatch):
    """Within the bounds, a network may still not fit this machine: the allocator's refusal is one line."""
    from contsup import run

    def refuse(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 603979776 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(run, "LocalNetwork", refuse)
    line = cli_error(capsys, [*TRAIN, "--out", str(tmp_path / "run"), *mode])
    assert "this machine's memory cannot hold the network (resnet8, K=2" in line and "lower --widen" in line, line


@pytest.mark.parametrize("flags,message", [
    (["--ranks", "1000000000"], "ranks must be an integer >= 1 and <= 1024"),
    (["--threads", "1000000000"], "threads must be an integer >= 0 and <= 1024"),
    (["--ranks", "2", "--lr", "-1"], "lr must be"),
])
def test_ranks_and_threads_bounded_before_any_is_started(flags, message, tmp_path, capsys, monkeypatch):
    """No process is started and no thread count set for a run that would be refused (without the bound, 10^9
    ranks were started, each to refuse the run; here starting one fails the test instead)."""
    from contsup.distributed import spawn

    def never(*args, **kwargs):
        raise AssertionError("started before the settings were checked")

    monkeypatch.setattr(spawn.subprocess, "Popen", never)
    monkeypatch.setattr(spawn.torch, "set_num_threads", never)
    assert message in cli_error(capsys, [*TRAIN, *flags, "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
