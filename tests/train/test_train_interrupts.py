"""Interrupts and leftovers: SIGINT / SIGTERM save a checkpoint and resume bit-exact, one process per run (an OS
lock that kill -9 releases), leftovers of killed writes are removed, a moved data cache does not block resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mesanet.train import RunInUseError, Trainer, list_checkpoints, read_metrics, train
from mesanet.train import trainer as trainer_module
from mesanet.train.interrupts import resume_command
from mesanet.train.run_lock import RunLock, lock_path
from mesanet.utils.config import to_dict

#: Steps of the interrupted runs: enough that a signal sent after step 2 lands well before the end.
SIGNAL_STEPS = 24
#: Seconds to wait for a child process to start training / to stop (normally a few seconds each).
CHILD_TIMEOUT = 180


@pytest.fixture
def one_thread():
    """The interrupted child runs on one thread: the in-process runs compared with it bit for bit do as well."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(run: Path) -> int:
    try:
        return len(read_metrics(run / "metrics.csv"))
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_the_resumed_run_is_bit_exact(make_cfg, tmp_path, one_thread, signum):
    over = dict(max_steps=SIGNAL_STEPS, checkpoint_every=0, eval_every=8)
    cfg = make_cfg(name="interrupted", **over)
    config_file = tmp_path / "interrupted.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(cfg)))
    run = Path(cfg.out_dir) / cfg.name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "mesanet.train", str(config_file), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + CHILD_TIMEOUT
    while _rows(run) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signum)
    out, err = child.communicate(timeout=CHILD_TIMEOUT)
    assert child.returncode == 128 + signum, out[-2000:] + err[-3000:]

    [ckpt] = list_checkpoints(run / "checkpoints")  # saved at the step boundary after the signal
    step = int(ckpt.name.split("_")[1])
    assert 2 <= step < SIGNAL_STEPS
    lines = [line for line in err.splitlines() if "interrupted by" in line]
    assert lines == [
        f"mesanet train: training interrupted by {signal.Signals(signum).name} after step {step}: checkpoint "
        f"{ckpt} saved; resume with: {resume_command([str(config_file)], True)}"
    ]
    assert "Traceback" not in err

    resumed = train(cfg, progress=False)
    assert resumed.start_step == step and resumed.steps == SIGNAL_STEPS
    straight = train(make_cfg(name="straight", **over), progress=False)
    a, b = read_metrics(straight.run_dir / "metrics.csv"), read_metrics(run / "metrics.csv")
    assert [r["step"] for r in b] == list(range(1, SIGNAL_STEPS + 1))
    for key in ("train_loss", "lr", "grad_norm", "val_loss"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    final_a, final_b = load_file(straight.run_dir / "final" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_resume_command_keeps_the_arguments_and_asks_for_resume():
    assert resume_command(["configs/tiny.yaml", "max_steps=6"], True) == "mesanet train configs/tiny.yaml max_steps=6"
    assert resume_command(["a b.yaml", "resume=false"], False) == "mesanet train 'a b.yaml' resume=true"


def test_a_second_trainer_on_the_same_run_stops_at_once_naming_the_holder(make_cfg, monkeypatch):
    cfg = make_cfg()
    run = Path(cfg.out_dir) / cfg.name
    holder = RunLock(run).acquire()

    def no_data(*a, **k):
        raise AssertionError("the second process must stop before preparing any data")

    monkeypatch.setattr(trainer_module, "prepare_data", no_data)
    try:
        with pytest.raises(
            RunInUseError,
            match=rf"run directory {run} is in use by another training process \(pid "
            rf"{os.getpid()} on host {socket.gethostname()}, started 20",
        ):
            Trainer(cfg, progress=False)
    finally:
        holder.release()
    assert not run.exists()  # nothing was written

    from mesanet.train.__main__ import main
    from mesanet.utils.cli_errors import run_cli

    holder = RunLock(run).acquire()
    try:
        code = run_cli("mesanet train", main, [f"out_dir={cfg.out_dir}", f"name={cfg.name}"])
    finally:
        holder.release()
    assert code == 2


def test_kill_9_releases_the_lock(make_cfg, tmp_path):
    """The lock is the kernel's: a holder killed with SIGKILL never leaves a stale lock behind."""
    run = Path(make_cfg().out_dir) / "run"
    path = lock_path(run)
    path.parent.mkdir(parents=True)
    script = textwrap.dedent(f"""
        import fcntl, sys, time
        f = open({str(path)!r}, "a+")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match="holder unknown"):
            RunLock(run).acquire()
    finally:
        holder.kill()  # SIGKILL
        holder.wait(timeout=30)
    RunLock(run).acquire().release()


def test_leftovers_of_killed_writes_are_removed_and_a_moved_cache_resumes(make_cfg, tmp_path):
    cfg = make_cfg(max_steps=2, checkpoint_every=1)
    first = train(cfg, progress=False)
    run = first.run_dir
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["cache_dir"] == str(Path(cfg.data.cache_dir).resolve())  # evaluation finds the caches there
    assert json.loads((run / "final" / "checksums.json").read_text())["files"]["model.safetensors"]["sha256"]
    leftovers = [run / ".tmp-final-99999", run / ".trash-final-99998", run / "checkpoints" / ".tmp-step_000003-99997"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half a file")
    (run / ".tmp-config.yaml-99996").write_text("half")

    # data.cache_dir is a location, not a training setting: changing only it resumes (the data are checked by hash)
    moved = make_cfg(max_steps=3, checkpoint_every=1, data=dict(cache_dir=str(tmp_path / "moved-cache")))
    result = train(moved, progress=False)
    assert result.start_step == 2 and result.steps == 3
    assert not any(p.name.startswith((".tmp-", ".trash-")) for p in [*run.iterdir(), *(run / "checkpoints").iterdir()])
