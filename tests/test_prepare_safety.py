"""`pretrain prepare` never records a wrong result: one writer per part, inputs that change while
being read fail the run, leftovers of killed runs are cleaned, a full disk is one clear line."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_prepare import corpus_lines, make_tokenizer, write_lines, write_manifest

from engine.packed import PackedDataset, part_name
from pretrain.prepare import PrepareConfig, prepare
from zhllama.errors import UserError
from zhllama.locks import output_lock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture()
def manifest(tmp_path) -> Path:
    a = write_lines(tmp_path / "a.txt", corpus_lines(40, seed=3))
    return write_manifest(tmp_path / "m.yaml", [{"name": "a", "file": a}])


def _cfg(manifest, tok_dir, out, **kw) -> PrepareConfig:
    return PrepareConfig(manifest=str(manifest), tokenizer=str(tok_dir), block_size=kw.pop("block_size", 16),
                         out=str(out), progress=False, **kw)


def test_a_second_prepare_into_the_same_part_is_refused_while_the_first_runs(manifest, tok_dir, tmp_path):
    out = tmp_path / "out"
    part = out / part_name(0, 1)
    # Another process holds the part (as a running `pretrain prepare` does): flock is per process.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from zhllama.locks import output_lock\n"
         f"with output_lock({str(out / ('.' + part.name + '.lock'))!r}, 'x', 'y'):\n"
         "    print('held', flush=True); time.sleep(60)"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=r"being written by another `python -m pretrain prepare` right now"):
            prepare(_cfg(manifest, tok_dir, out, block_size=32))
        assert not part.exists()
    finally:
        holder.kill()
        holder.wait()
    result = prepare(_cfg(manifest, tok_dir, out, block_size=32))  # the holder is gone: the lock went with it
    assert result.status == "prepared" and result.report["block_size"] == 32
    assert sorted(p.name for p in out.iterdir()) == [part.name, "prepare_report.json"]  # no lock file left


def _hold(code: str) -> subprocess.Popen:
    """Another process running ``code`` (flock is per process), once it printed 'held'."""
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_prepare_with_another_shard_count_is_refused_while_the_first_runs(manifest, tok_dir, tmp_path):
    """Was: a --shard 0/4 run deleted the parts of running --shard i/2 siblings and left a mixed folder."""
    out = tmp_path / "out"
    holder = _hold("import time; from zhllama.locks import group_lock\n"
                   f"with group_lock({str(out)!r}, 'shard-count-2', 'x', 'y'):\n"
                   "    print('held', flush=True); time.sleep(60)")
    try:
        with pytest.raises(UserError, match=r"other settings \(shard-count-2; this run: shard-count-4\)"):
            prepare(_cfg(manifest, tok_dir, out, shard=(0, 4)))
        assert prepare(_cfg(manifest, tok_dir, out, shard=(1, 2))).status == "prepared"  # a sibling: welcome
    finally:
        holder.kill()
        holder.wait()
    assert prepare(_cfg(manifest, tok_dir, out, shard=(0, 4), overwrite=True)).status == "prepared"
    # the 2-part data replaced; the killed holder's lock file cleaned up (the total report waits for parts 1-3)
    assert sorted(p.name for p in out.iterdir()) == [part_name(0, 4)]


def test_group_locks_let_one_group_in_at_a_time_and_clean_up(tmp_path):
    from zhllama.locks import group_lock

    with group_lock(tmp_path, "a", "OUT", "cmd"), group_lock(tmp_path, "a", "OUT", "cmd"):  # same group: shared
        holder = _hold("from zhllama.locks import group_lock\n"
                       f"try:\n    with group_lock({str(tmp_path)!r}, 'b', 'OUT', 'cmd'): pass\n"
                       "except Exception as e:\n    print('held'); print(e)")
        refused = holder.stdout.read()
        holder.wait()
        assert "OUT is being written by a `cmd` with other settings (a; this run: b)" in refused
    with group_lock(tmp_path, "b", "OUT", "cmd"):  # group a is gone
        pass
    assert list(tmp_path.iterdir()) == []


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    lock = tmp_path / ".p.lock"
    with output_lock(lock, "P", "cmd"):
        with pytest.raises(UserError, match="P is being written by another `cmd`"):
            with output_lock(lock, "P", "cmd"):
                pass
    with output_lock(lock, "P", "cmd"):  # released on exit
        pass
    assert not lock.exists()


def test_a_source_that_changes_while_being_read_fails_and_writes_nothing(manifest, tok_dir, tmp_path, monkeypatch):
    from pretrain import prepare_stream

    source = tmp_path / "a.txt"
    real = prepare_stream.document_stream

    def appending(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 3:  # a writer appends while prepare is reading
                with open(source, "a", encoding="utf-8") as fh:
                    fh.write("".join(f"appended document {k}\n" for k in range(500)))
            yield item

    monkeypatch.setattr(prepare_stream, "document_stream", appending)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"changed while it was being read") as info:
        prepare(_cfg(manifest, tok_dir, out))
    assert str(source) in str(info.value)
    assert not (out / part_name(0, 1)).exists() and not list(out.glob(".*partial*"))


def test_stale_partial_folders_of_the_same_part_are_removed(manifest, tok_dir, tmp_path, capsys):
    out = tmp_path / "out"
    stale = out / f".{part_name(0, 1)}.partial-abc123"
    other = out / f".{part_name(1, 2)}.partial-xyz"  # another part's: maybe a sibling job running now
    for folder in (stale, other):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "tokens-00000.bin").write_bytes(b"\0" * 1000)
    prepare(_cfg(manifest, tok_dir, out))
    assert not stale.exists() and other.exists()
    assert "left by an interrupted prepare" in capsys.readouterr().err


def test_a_full_disk_is_one_clear_error(manifest, tok_dir, tmp_path, monkeypatch):
    from pretrain import shards

    def full(self, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "tokens-00000.bin"))

    monkeypatch.setattr(shards.SplitWriter, "add", full)
    with pytest.raises(UserError, match=r"--out .*cannot write .*No space left on device"):
        prepare(_cfg(manifest, tok_dir, tmp_path / "out"))
    with pytest.raises(UserError, match="no prepared parts"):
        PackedDataset(tmp_path / "out")


def test_a_read_only_out_is_one_clear_error(manifest, tok_dir, tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(UserError, match=r"--out .*ro.*cannot write there \(Read-only file system"):
        prepare(_cfg(manifest, tok_dir, tmp_path / "ro"))


def test_a_folder_given_for_a_file_says_so(tok_dir, tmp_path):
    (tmp_path / "m.yaml").mkdir()
    with pytest.raises(UserError, match=r"manifest .*m\.yaml is a directory, expected a file"):
        prepare(_cfg(tmp_path / "m.yaml", tok_dir, tmp_path / "out"))
    report = tmp_path / "tok_file"
    report.write_text(json.dumps({}))
    with pytest.raises(UserError, match=r"tokenizer folder .*tok_file is a file, expected a folder"):
        prepare(_cfg(write_manifest(tmp_path / "m2.yaml", [{"name": "a", "file": write_lines(
            tmp_path / "a.txt", corpus_lines(5))}]), report, tmp_path / "out"))
