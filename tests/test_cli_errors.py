"""Every user error of every command-line entry point ends in ONE line on stderr, ``<prog>: error: ...``, and exit
code 2 (usage, config) or 1 (runtime failure, e.g. a non-finite loss); ``--debug`` / ``MESANET_DEBUG=1`` show the
traceback instead (same exit code); bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mesanet import cli
from mesanet.train import NonFiniteError, NonFiniteLossError
from mesanet.utils.cli_errors import DEBUG_ENV, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, split_debug

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def run(capsys, *argv: str) -> tuple[int, str]:
    """``mesanet ARGV`` in this process: its exit code and its one stderr line (asserted to be exactly one)."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


def fake_train(monkeypatch, effect=None) -> list:
    """Replace the training run behind ``mesanet train``: record (config, progress) or raise ``effect``."""
    calls = []

    def train(cfg, progress=True):
        calls.append((cfg, progress))
        if effect is not None:
            raise effect
        return SimpleNamespace(final_train_loss=None)

    monkeypatch.setattr("mesanet.train.__main__.train", train)
    return calls


def bare(cls, message: str) -> BaseException:
    """An instance of ``cls`` with ``message``, whatever its constructor takes."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


# --- config files and overrides (exit 2) ---------------------------------------------------------------------


def test_yaml_syntax_error_in_the_config_file(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel:\n  preset: tiny\n mixer: mesa\n")
    code, line = run(capsys, "train", str(path))
    assert code == EXIT_USAGE
    assert line.startswith(f"mesanet train: error: config file '{path}': invalid YAML at line 4, column 2")


def test_yaml_syntax_error_in_an_override(capsys):
    code, line = run(capsys, "train", TINY, "optim.lr=[1")
    assert code == EXIT_USAGE
    assert line.startswith("mesanet train: error: override 'optim.lr=[1': value '[1': invalid YAML at line 1, column 3")


def test_missing_and_unreadable_config_files(capsys, tmp_path, monkeypatch):
    assert run(capsys, "train", str(tmp_path / "nope.yaml")) == (
        EXIT_USAGE,
        f"mesanet train: error: config file '{tmp_path / 'nope.yaml'}' does not exist",
    )
    assert run(capsys, "train", str(tmp_path))[1].endswith("expected a file, got a directory or special file")
    locked = tmp_path / "locked.yaml"
    locked.write_text("name: x\n")

    def denied(self, *args, **kwargs):  # root ignores chmod 000: refuse the read itself
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(locked), "read_text", denied)
    assert run(capsys, "train", str(locked)) == (
        EXIT_USAGE,
        f"mesanet train: error: config file '{locked}' cannot be read: Permission denied",
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", r"TrainConfig: unknown keys ['bogus']; valid keys: ['batch_size', "),
        ("optim.lrr=1", r"optim: unknown keys ['lrr']; valid keys: ['betas', 'eps', "),
        ("precision=fp16", r"precision: expected one of ['fp32', 'bf16'], got 'fp16'"),
    ],
)
def test_unknown_keys_and_bad_types_list_what_is_valid(capsys, override, message):
    code, line = run(capsys, "train", TINY, override)
    assert code == EXIT_USAGE and line.startswith("mesanet train: error: ") and message in line


def test_compare_config_errors_too(capsys):
    code, line = run(capsys, "compare", "bogus_key=1")
    assert code == EXIT_USAGE and line.startswith("mesanet compare: error: ") and "unknown keys ['bogus_key']" in line


# --- the command line itself (exit 2) ------------------------------------------------------------------------


def test_options_may_follow_the_overrides(monkeypatch):
    calls = fake_train(monkeypatch)
    assert cli.main(["train", TINY, "optim.lr=1e-3", "--no-progress", "max_steps=3"]) == 0
    ((cfg, progress),) = calls
    assert (cfg.optim.lr, cfg.max_steps, progress) == (1e-3, 3, False)
    from mesanet.train.__main__ import main as train_main  # `python -m mesanet.train` parses the same way

    train_main([TINY, "--no-progress", "max_steps=4"])
    assert (calls[-1][0].max_steps, calls[-1][1]) == (4, False)


def test_synth_options_may_follow_the_overrides(tmp_path):
    from mesanet.synth.__main__ import parse_args

    cfg, args = parse_args(["--quick", "steps=3", "--out", str(tmp_path), "seeds=[1]"])
    assert (cfg.steps, cfg.seeds, cfg.out_dir, args.quick) == (3, [1], str(tmp_path), True)


@pytest.mark.parametrize(
    "argv, prog, message",
    [
        (["train", TINY, "--bogus"], "mesanet train", "unrecognized arguments: --bogus (see `mesanet train --help`)"),
        ([], "mesanet", "the following arguments are required: command"),
        (["trian"], "mesanet", "argument command: invalid choice: 'trian'"),
        (["eval"], "mesanet eval", "the following arguments are required: path"),
        (["generate", "runs/x"], "mesanet generate", "the following arguments are required: --prompt"),
        (["eval", "runs/x", "--max-iter", "many"], "mesanet eval", "argument --max-iter: invalid int value: 'many'"),
        (["synth", "--bogus"], "mesanet synth", "unrecognized arguments: --bogus"),
        (["synth", "--quick", "configs/synth.yaml"], "mesanet synth", "--quick: expected no CONFIG.yaml"),
        (["needle", "runs/x", "--trials", "x"], "mesanet needle", "argument --trials: invalid int value: 'x'"),
        (["mesaopt"], "mesanet mesaopt", "expected an analysis name, one of ["),
        (["mesaopt", "nope"], "mesanet mesaopt", "unknown analysis 'nope'; expected one of ["),
        (["mesaopt", "train"], "mesanet mesaopt", "expected zoo names from ["),
        (["mesaopt", "probes", "--bogus"], "mesanet mesaopt", "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors(capsys, argv, prog, message):
    code, line = run(capsys, *argv)
    assert code == EXIT_USAGE and line.startswith(f"{prog}: error: ") and message in line, line


def test_missing_run_directory(capsys, tmp_path):
    code, line = run(capsys, "eval", str(tmp_path / "no-run"))
    assert code == EXIT_USAGE and line.startswith("mesanet eval: error: ") and "no-run" in line


@pytest.mark.parametrize("command", [["generate", "runs/x", "--prompt", "p"], ["needle", "runs/x"]])
def test_device_flag_is_checked_against_this_machine(capsys, monkeypatch, command):
    code, line = run(capsys, *command, "--device", "bogus")
    assert code == EXIT_USAGE and "argument --device: expected auto, cpu, cuda or cuda:N, got 'bogus'" in line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, line = run(capsys, *command, "--device", "cuda")
    assert code == EXIT_USAGE and "got 'cuda', but CUDA is not available on this machine (expected cpu or auto)" in line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, line = run(capsys, *command, "--device", "cuda:3")
    assert code == EXIT_USAGE and "got 'cuda:3', but this machine has 1 CUDA device(s) (expected cuda:0 .. cuda:0)" in line


# --- runtime failures (exit 1), interrupts, bugs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        bare(NonFiniteError, "non-finite loss (nan) at step 3: training stopped\nbefore the optimizer step"),
        bare(NonFiniteLossError, "non-finite loss nan at step 2"),
        OSError(28, "No space left on device", "runs/x/checkpoint"),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
)
def test_runtime_failures_exit_1_with_one_line(capsys, monkeypatch, error):
    fake_train(monkeypatch, error)
    code, line = run(capsys, "train", TINY)
    assert code == EXIT_FAILURE and line.startswith("mesanet train: error: ")
    assert " ".join(str(error).split()) in line or "No space left on device: runs/x/checkpoint" in line


def test_synth_non_finite_loss_exits_1(capsys, monkeypatch):
    def diverge(cfg):
        raise NonFiniteLossError("non-finite loss inf at step 7")

    monkeypatch.setattr("mesanet.synth.__main__.run_synth", diverge)
    assert run(capsys, "synth", "--quick") == (EXIT_FAILURE, "mesanet synth: error: non-finite loss inf at step 7")


def test_ctrl_c_exits_130_with_one_line(capsys, monkeypatch):
    fake_train(monkeypatch, KeyboardInterrupt())
    assert run(capsys, "train", TINY) == (EXIT_INTERRUPTED, "mesanet train: error: interrupted")


def test_a_bug_keeps_its_traceback(monkeypatch):
    fake_train(monkeypatch, TypeError("unsupported operand"))
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["train", TINY])


# --- --debug / MESANET_DEBUG -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag-first", "flag-last", "env"])
def test_debug_shows_the_traceback_with_the_same_exit_code(capsys, monkeypatch, how):
    argv = ["train", TINY, "optim.lr=[1"]
    if how == "env":
        monkeypatch.setenv(DEBUG_ENV, "1")
    argv = ["--debug", *argv] if how == "flag-first" else [*argv, "--debug"] if how == "flag-last" else argv
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "yaml" in err and "ConfigError: override 'optim.lr=[1'" in err


def test_debug_off_values_and_the_flag_is_removed_before_parsing(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert run(capsys, "train", TINY, "optim.lr=[1")[0] == EXIT_USAGE
    assert split_debug(["train", "--debug", "x=1", "--", "--debug"]) == (["train", "x=1", "--", "--debug"], True)


# --- the real entry points, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, prog, debug",
    [
        (["-m", "mesanet", "train", TINY, "optim.lr=[1"], "mesanet train", False),
        (["-m", "mesanet.train", TINY, "--no-progress", "optim.lr=[1"], "python -m mesanet.train", False),
        (["-m", "mesanet.synth", "--quick", "--bogus"], "python -m mesanet.synth", False),
        (["-m", "mesanet", "train", TINY, "optim.lr=[1"], "mesanet train", True),
    ],
)
def test_subprocess_exit_code_and_stderr(argv, prog, debug):
    env = {**os.environ, DEBUG_ENV: "1" if debug else ""}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert proc.stdout == ""
    if debug:
        assert "Traceback (most recent call last)" in proc.stderr
    else:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
