"""The distribution as a user installs it: built into a wheel, installed into a
fresh venv, run from there (not from this checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out)]
    subprocess.run([*build, str(REPO_ROOT)], check=True, cwd=out, capture_output=True)
    [built] = out.glob("transfer_ledger-*.whl")
    return built


def test_the_wheel_puts_no_top_level_name_but_ledger_into_site_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"ledger"}
    # The read model and the SQL the repository keeps at the top level, inside ledger/.
    assert "ledger/projections/queries.py" in names
    assert any(n.startswith("ledger/migrations/sqlite/") and n.endswith(".sql") for n in names)
    assert any(n.startswith("ledger/migrations/postgresql/") and n.endswith(".sql") for n in names)


def test_the_installed_wheel_migrates_a_database_and_prints_the_matrix(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies are this environment's (no network needed); the ledger
    # itself only the wheel's: a plain path line in a .pth file does not run the
    # editable install's own .pth hook, so this checkout stays out of sight.
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "PYTHON"))}
    ledger = venv / "bin" / "ledger"
    where = subprocess.run(
        [str(python), "-c", "import ledger; print(ledger.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout
    assert where.startswith(str(site_packages)), where

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ledger), *args], check=False, capture_output=True, text=True, cwd=tmp_path, env=env
        )

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrated = run("migrate", "--database-url", url)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0001_" in migrated.stdout
    matrix = run("matrix")
    assert matrix.returncode == 0, matrix.stderr
    assert "reversal_pending" in matrix.stdout and "permanently_failed" in matrix.stdout
    listed = run("transfer", "list", "--database-url", url)
    assert listed.returncode == 0, listed.stderr
