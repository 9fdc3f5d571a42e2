"""Storage (issue 5.4): a corrupted or truncated study file, a read-only or full run folder.

Each must stop the search with a clear error (``InputError`` naming ``--run-dir``; exit 2
from the CLI) before any work starts, and leave every file of the run as it was
(sha256 of every file before and after).

The tests run as root in CI, and root ignores permission bits (``chmod 0o555`` does not
stop it), so "read-only" is a read-only bind mount and "full" a tiny tmpfs; both need
CAP_SYS_ADMIN and are skipped, with the reason, where mounting is not allowed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import file_hashes, real_study, seed_run_dir, tiny_search_args, tiny_settings

from mvit_nas import InputError
from mvit_nas.cli import main
from mvit_nas.run import LOCK_FILE, SETTINGS_FILE, STORAGE_FILE
from mvit_nas.search import search


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """A finished 3-trial run (read only: copy what you need)."""
    return real_study(tmp_path_factory, data)


def _run_with_study_file(folder: Path, study: Path, content: bytes) -> Path:
    """A run folder with the real run's settings and ``content`` as its study file."""
    folder.mkdir(parents=True)
    shutil.copy(study / SETTINGS_FILE, folder / SETTINGS_FILE)
    (folder / STORAGE_FILE).write_bytes(content)
    return folder


def _refusal(run_dir: Path) -> InputError:
    """Run a search that must be refused; any other outcome is an AssertionError."""
    try:
        search(tiny_settings(), run_dir, trials=4, executor="local", workers=1)
    except InputError as error:
        return error
    except Exception as error:
        raise AssertionError(f"not refused but failed: {type(error).__name__}: {error}") from error
    raise AssertionError("the search was not refused")


def _assert_refused_and_untouched(run_dir: Path, *, expect: str) -> None:
    before = file_hashes(run_dir)
    error = _refusal(run_dir)
    assert error.field == "--run-dir"
    assert expect in str(error)
    after = file_hashes(run_dir)
    assert {name: digest for name, digest in after.items() if name != LOCK_FILE} == before, "a file was changed"
    assert set(after) <= set(before) | {LOCK_FILE}, "the refused search wrote a file"


def test_garbage_study_file_is_refused_before_any_work(tmp_path: Path, study: Path) -> None:
    garbage = random.Random(5).randbytes(64 * 1024)
    run_dir = _run_with_study_file(tmp_path / "run", study, garbage)
    _assert_refused_and_untouched(run_dir, expect="corrupted or not an Optuna study")
    assert not (run_dir / "data").exists(), "work (the dataset) started before the check"


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.9])
def test_truncated_study_file_is_refused_before_any_work(tmp_path: Path, study: Path, fraction: float) -> None:
    content = (study / STORAGE_FILE).read_bytes()
    run_dir = _run_with_study_file(tmp_path / "run", study, content[: int(len(content) * fraction)])
    _assert_refused_and_untouched(run_dir, expect="corrupted or not an Optuna study")


def test_cli_search_on_a_corrupted_run_exits_2_with_one_line(
    tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run_with_study_file(tmp_path / "run", study, b"SQLite format 3\x00" + b"\xff" * 4000)
    before = file_hashes(run_dir)
    status = main([*tiny_search_args(tmp_path / "tiny.yaml"), "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("mvit-nas search: error: --run-dir: "), err
    assert str(run_dir / STORAGE_FILE) in err
    assert {k: v for k, v in file_hashes(run_dir).items() if k != LOCK_FILE} == before


def _corruptions(content: bytes, count: int) -> Iterator[bytes]:
    """Real study files with a few bytes overwritten where SQLite itself finds the damage.

    Seeded, and judged on a scratch copy by ``PRAGMA integrity_check``: only files SQLite
    reports as damaged (or cannot even read) are yielded.
    """
    rng = random.Random(2024)
    page = 4096
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"reliability-corrupt-{os.getpid()}.db"
    found = 0
    try:
        for _ in range(400):
            damaged = bytearray(content)
            start = rng.randrange(1, len(content) // page) * page
            offset = start + (rng.randrange(0, 12) if rng.random() < 0.5 else page - rng.randrange(8, 200))
            damaged[offset : offset + 8] = rng.randbytes(8)
            scratch.write_bytes(bytes(damaged))
            try:
                with contextlib.closing(sqlite3.connect(f"file:{scratch}?mode=ro", uri=True)) as connection:
                    healthy = connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            except (sqlite3.Error, UnicodeDecodeError):
                healthy = False
            if not healthy:
                found += 1
                yield bytes(damaged)
                if found == count:
                    return
    finally:
        scratch.unlink(missing_ok=True)


@pytest.mark.slow
def test_study_file_damaged_inside_is_refused_before_any_work(tmp_path: Path, study: Path, data: Path) -> None:
    content = (study / STORAGE_FILE).read_bytes()
    for index, damaged in enumerate(_corruptions(content, count=6)):
        run_dir = _run_with_study_file(tmp_path / f"run{index}", study, damaged)
        seed_run_dir(run_dir, data)  # if the check lets it through, the search gets going at once
        _assert_refused_and_untouched(run_dir, expect="corrupted")


# --- read-only and full folders -----------------------------------------------------------


def _umount(target: Path) -> None:
    gc.collect()  # a failed search's storage engine may still hold study.db open
    if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(target)], check=True)


def _mount(args: list[str], target: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip()})")


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """``folder`` made read-only for everyone, root included (a read-only bind mount)."""
    if os.geteuid() != 0:  # permission bits are enough for anyone but root
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    _mount(["--bind", str(folder)], folder)
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only ({remount.stderr.strip()})")
        yield
    finally:
        _umount(folder)


def test_root_ignores_permission_bits_so_chmod_is_no_read_only_test(tmp_path: Path) -> None:
    # Why the tests below use a read-only mount: as root, a 0o555 folder is still writable.
    if os.geteuid() != 0:
        pytest.skip("only root bypasses permission bits")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    folder.chmod(0o555)
    assert os.access(folder, os.W_OK)
    (folder / "written").write_text("root writes anyway")


def test_read_only_run_folder_is_refused_before_any_work(tmp_path: Path, study: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(study, run_dir, ignore=shutil.ignore_patterns("data"))
    before = file_hashes(run_dir)
    with _read_only(run_dir):
        error = _refusal(run_dir)
        assert error.field == "--run-dir"
        assert str(run_dir) in str(error) and "not writable" in str(error)
    assert file_hashes(run_dir) == before


def test_new_run_under_a_read_only_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    with _read_only(parent):
        status = main([*tiny_search_args(tmp_path / "tiny.yaml"), "--run-dir", str(parent / "run")])
        err = capsys.readouterr().err
        assert status == 2, err
        assert err.count("\n") == 1 and err.startswith("mvit-nas search: error: --run-dir: cannot create"), err
        assert list(parent.iterdir()) == []


@contextlib.contextmanager
def _full_folder(folder: Path, size_kib: int) -> Iterator[None]:
    """A tmpfs of ``size_kib`` at ``folder``, to be filled by the caller."""
    folder.mkdir()
    _mount(["-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs"], folder)
    try:
        yield
    finally:
        _umount(folder)


def _fill(folder: Path) -> None:
    with (folder / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)


def test_full_run_folder_is_refused_before_any_work(tmp_path: Path, study: Path, data: Path) -> None:
    run_dir = tmp_path / "run"
    with _full_folder(run_dir, size_kib=1024):
        for name in (SETTINGS_FILE, STORAGE_FILE):
            shutil.copy(study / name, run_dir / name)
        (run_dir / "data").symlink_to(data)  # the dataset cache lives elsewhere; only the run folder is full
        _fill(run_dir)
        before = file_hashes(run_dir)
        try:
            assert _refusal(run_dir).field == "--run-dir"
        finally:
            after = file_hashes(run_dir)
            assert {k: v for k, v in after.items() if k != LOCK_FILE} == before, "a file changed on a full folder"
