"""Bundled spaces: `--space lenet` works from any folder, and an installed (not editable) nas ships them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas.cli import app
from nas.spacefile import BUNDLED, find_space, load_space

ROOT = Path(__file__).parent.parent


def test_a_bundled_space_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("lenet", "lenet.yaml", "lenet.yml"):
        assert find_space(name) == BUNDLED / "lenet.yaml"
    assert load_space("seed_lenet").name == "seed_lenet"


def test_a_file_of_the_same_name_wins_over_the_bundled_space(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("lenet.yaml").write_text("name: mine\n")
    assert find_space("lenet.yaml") == Path("lenet.yaml")
    assert load_space("lenet.yaml").name == "mine"
    assert find_space("sub/lenet.yaml") == Path("sub/lenet.yaml")  # a path with folders is never a name


def test_an_unknown_space_names_the_bundled_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "--space", "lenett"])
    assert result.exit_code == 2
    assert "no bundled space of that name" in result.output and "lenet, seed_lenet, seed_network" in result.output


def test_nas_spaces_lists_every_bundled_space():
    result = CliRunner().invoke(app, ["spaces", "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == {p.stem for p in BUNDLED.glob("*.yaml")} >= {"lenet", "seed_lenet", "seed_network"}
    assert rows["lenet"]["searched"] > 0 and rows["lenet"]["baselines"] == 2 and rows["seed_lenet"]["searched"] == 0
    assert "LeNet" in rows["lenet"]["summary"]
    table = CliRunner().invoke(app, ["spaces"])
    assert table.exit_code == 0 and "seed_network" in table.output and "fixed net" in table.output


def test_a_search_runs_a_bundled_space_by_name_in_another_folder(tmp_path, monkeypatch, idx_dir):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["search", "--space", "seed_network", "--trials", "1", "--epochs", "1",
                                      "--data-dir", str(idx_dir), "--storage", "sqlite:///s.db", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "1 trained trial in study" in result.output and (tmp_path / "s.db").is_file()


@pytest.mark.slow
def test_the_built_wheel_ships_the_bundled_spaces(tmp_path):
    """What `pip install .` (not editable) installs: the spaces must be package data in the wheel."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel, = tmp_path.glob("nas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"nas/spaces/{p.name}" for p in BUNDLED.glob("*.yaml")} <= names
