"""The data cache defaults to the user's cache folder (``$MESANET_CACHE``, else ``$XDG_CACHE_HOME/mesanet``, else
``~/.cache/mesanet``), never a folder relative to the working directory; the suite's own points at a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

from mesanet.data import DataConfig
from mesanet.data.config import CACHE_ENV, user_cache_dir


def test_the_suite_never_uses_the_real_user_cache(tmp_path_factory):
    assert Path(os.environ[CACHE_ENV]).is_relative_to(tmp_path_factory.getbasetemp())
    assert DataConfig().cache_root == Path(os.environ[CACHE_ENV]).resolve()


def test_default_cache_folder_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert DataConfig().cache_root == tmp_path / "mine"
    monkeypatch.setenv(CACHE_ENV, "rel")  # a relative $MESANET_CACHE is taken once, as an absolute folder
    assert user_cache_dir() == tmp_path / "rel"
    monkeypatch.delenv(CACHE_ENV)
    assert DataConfig().cache_root == tmp_path / "xdg" / "mesanet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert DataConfig().cache_root == tmp_path / "home" / ".cache" / "mesanet"
    assert DataConfig(cache_dir="explicit").cache_root == Path("explicit")  # an explicit folder is kept as given
    assert DataConfig().cache_dir is None  # the saved config stays portable (no machine path in config.yaml)
