"""Where throwaway databases go: RAM only when there is a usable directory with room."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests import ramdisk


def test_no_ram_directory_means_the_usual_temporary_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ramdisk, "RAM_DIR", tmp_path / "missing")
    assert ramdisk.ram_temp_dir() is None


def test_a_ram_directory_without_room_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ramdisk, "RAM_DIR", tmp_path)
    info = os.statvfs(tmp_path)
    monkeypatch.setattr(ramdisk, "MIN_FREE_BYTES", info.f_blocks * info.f_frsize + 1)
    assert ramdisk.ram_temp_dir() is None


def test_a_usable_directory_with_room_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under /tmp (mode 1777, as /dev/shm): the tests' own temp dirs are private.
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        Path(directory).chmod(0o1777)
        monkeypatch.setattr(ramdisk, "RAM_DIR", Path(directory))
        monkeypatch.setattr(ramdisk, "MIN_FREE_BYTES", 0)
        assert ramdisk.ram_temp_dir() == directory
