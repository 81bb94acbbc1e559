"""A non-editable ``pip install .`` in a fresh virtual environment runs the packaged presets from another folder.

The new environment sees the suite's installed dependencies through a ``.pth`` line (nothing is downloaded) but
not the editable ``mesanet`` of the suite's own environment (``.pth`` files of a directory added that way are not
processed), so the commands below run the copy that ``pip`` installed into ``site-packages``.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with ``mesanet`` pip-installed (non-editable) from a copy of the source tree; its bin folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: building in place would write build/ and *.egg-info into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "suite_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--ignore-installed",
        str(source),
    ]
    done = subprocess.run(pip, capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir / "bin"


def run(bin_dir: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MESANET_CACHE": str(cwd / "cache"), "PYTHONPATH": ""}
    return subprocess.run([str(bin_dir / "mesanet"), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_presets_run_from_another_folder_after_a_non_editable_install(installed, tmp_path):
    where = subprocess.run(
        [str(installed / "python"), "-c", "import mesanet, mesanet.presets as p; print(mesanet.__file__); print(p.PRESET_DIR)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all("site-packages" in w and not w.startswith(str(REPO)) for w in where), where  # the installed copy
    for preset in ("tiny", "small", "compare", "synth-quick"):
        assert (Path(where[1]) / f"{preset}.yaml").is_file()

    printed = run(installed, tmp_path, "train", "small", "--print-config")
    assert printed.returncode == 0, printed.stderr
    assert "name: small" in printed.stdout and "preset: cpu-small" in printed.stdout

    trained = run(
        installed,
        tmp_path,
        "train",
        "tiny",
        "max_steps=2",
        "eval_every=0",
        "checkpoint_every=0",
        "log_every=1",
        "eval_batches=1",
        "data.max_documents=20",
        "--no-progress",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny" / "final" / "config.json").is_file()
    assert "step 2" in trained.stdout

    # synth --quick finds its preset: the run reads it and then reports that nothing has been trained yet
    quick = run(installed, tmp_path, "synth", "--quick", "--report-only")
    assert quick.returncode == 2 and "no finished cells in 'runs/synth-quick'" in quick.stderr, quick.stderr
    # compare: the preset name loads (an override that cannot run stops it before anything is trained)
    compare = run(installed, tmp_path, "compare", "compare", "base.batch_size=0")
    assert compare.returncode == 2 and "batch_size" in compare.stderr, compare.stderr
