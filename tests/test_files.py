"""What `nas` writes: an earlier export is replaced only whole, a folder of the user's files never."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import mount_tmpfs, unmount
from nas.cli import app
from nas.files import EXPORT_FILES, WriteError, is_export, new_folder_beside, replace_folder, write_file

FIXED = "architecture: {blocks: 1, block: {channels: 4}, head: {layers: 1, units: 8}}\nbudget: {epochs: 1}\n"


def train_export(tmp: Path, idx_dir: Path, out: Path, *extra: str):
    (tmp / "fixed.yaml").write_text(FIXED)
    return CliRunner().invoke(app, ["train", "--space", str(tmp / "fixed.yaml"), "--data-dir", str(idx_dir),
                                    "--export", str(out), "--quiet", *extra])


def test_force_replaces_an_earlier_export_and_leaves_nothing_beside_it(tmp_path, idx_dir):
    out = tmp_path / "exports" / "best"
    assert train_export(tmp_path, idx_dir, out).exit_code == 0
    first = (out / "model.pt").read_bytes()
    result = train_export(tmp_path, idx_dir, out, "--force", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORT_FILES) and is_export(out)
    assert (out / "model.pt").read_bytes() != first  # the new model (another seed) is in place
    assert [p.name for p in out.parent.iterdir()] == ["best"]  # no temporary or old folder left beside it


def test_export_dot_force_in_the_users_folder_deletes_nothing(tmp_path, idx_dir, monkeypatch):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "nas.db").write_bytes(b"SQLite format 3\0")
    monkeypatch.chdir(tmp_path)
    result = train_export(tmp_path, idx_dir, Path("."), "--force")
    assert result.exit_code == 2 and "holds files that are not an export of nas" in " ".join(result.output.split())
    assert (tmp_path / "thesis.tex").read_text() == "years of work" and (tmp_path / "studies" / "nas.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.yaml", "studies", "thesis.tex"]


def test_a_replace_that_fails_half_way_keeps_the_earlier_export(tmp_path, idx_dir):
    """The new folder on another file system: the old export is moved aside, the move of the new one
    fails (EXDEV), and the old one must be put back whole."""
    out = tmp_path / "out"
    assert train_export(tmp_path, idx_dir, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    elsewhere = tmp_path / "other-disk"
    mount_tmpfs(elsewhere, "size=8m")
    try:
        with new_folder_beside(elsewhere / "x") as new:
            (new / "metrics.json").write_text(json.dumps({"input_shape": [1, 28, 28], "classes": ["a", "b"]}))
            with pytest.raises(OSError):
                replace_folder(new, out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.yaml", "other-disk", "out"]
    finally:
        unmount(elsewhere)


def test_replace_refuses_a_folder_that_changed_into_the_users_since_the_check(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with new_folder_beside(out) as new, pytest.raises(WriteError, match="now holds files that are not an export"):
        replace_folder(new, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_an_export_from_a_study_on_a_read_only_disk_is_written_and_says_it_was_not_recorded(tmp_path, idx_dir):
    space = tmp_path / "fixed.yaml"
    space.write_text(FIXED.replace("budget", "name: tiny\nbudget"))
    db = tmp_path / "disk" / "s.db"
    db.parent.mkdir()
    result = CliRunner().invoke(app, ["search", "--space", str(space), "--storage", f"sqlite:///{db}", "--data-dir",
                                      str(idx_dir), "--trials", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = db.read_bytes()
    mount_tmpfs(tmp_path / "disk", "size=8m")  # the same study, now on a file system that is then made read-only
    try:
        db.write_bytes(saved)
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "disk")], check=True)
        result = CliRunner().invoke(app, ["best", "--storage", f"sqlite:///{db}", "--export", str(tmp_path / "out"),
                                          "--data-dir", str(idx_dir)])
        assert result.exit_code == 0, result.output
        assert "the study's storage is read-only, so the export is not recorded" in " ".join(result.output.split())
        assert is_export(tmp_path / "out")
    finally:
        unmount(tmp_path / "disk")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_what_nas_writes_gets_the_mode_the_users_umask_gives_not_a_private_one(tmp_path, umask):
    """Temporary files and folders get the modes open() and mkdir give; once in place they are the user's."""
    before = os.umask(umask)
    try:
        write_file(tmp_path / "report.html", "<p>")
        out = tmp_path / "export"
        with new_folder_beside(out) as new:
            (new / "metrics.json").write_text("{}")
            replace_folder(new, out)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_a_signal_just_after_the_temporary_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    """The window that tempfile.mkdtemp leaves open: its mkdir done, its name not yet returned."""
    real_mkdir = os.mkdir

    def mkdir_then_signal(path, *args):
        real_mkdir(path, *args)
        raise KeyboardInterrupt  # as a signal handler's exception lands at the next bytecode

    monkeypatch.setattr(os, "mkdir", mkdir_then_signal)
    with pytest.raises(KeyboardInterrupt):
        with new_folder_beside(tmp_path / "out"):
            pass
    assert list(tmp_path.iterdir()) == []
