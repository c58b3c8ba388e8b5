"""Checkpoints and data files are data, never code; a failed checkpoint write loses nothing."""

import errno
import os
import pickle
import subprocess
import sys

import pytest
import torch

from lavis.common.checkpoint import CheckpointWriteError, latest_checkpoint, load_checkpoint, save_atomic
from lavis.common.checkpoint_io import read_state_dict
from lavis.common.safe_pickle import UnsafePickleError, load_pickle
from lavis.datasets.annotation_io import AnnotationError, parsing


class WritesAFile:
    """Unpickling this would run os.system and create a file: the loaders must refuse it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "checkpoint_00000001.pth"
    with path.open("wb") as f:
        pickle.dump({"model": {"w": torch.zeros(2)}, "payload": WritesAFile(target)}, f)
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(path)
    assert not target.exists()


def test_data_pickle_with_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "x": WritesAFile(target)}], protocol=2))
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        load_pickle(path)
    assert not target.exists()


def test_every_one_byte_damage_of_a_data_pickle_is_a_clear_error(tmp_path):
    """Each byte of a small refs pickle set to several values: the read succeeds or fails naming the file, never with
    the unpickler's own MemoryError / SystemError (a corrupt length field, a corrupt buffer opcode)."""
    refs = [{"ref_id": i, "image_id": i, "sentences": [{"sent": "small red circle at the top left"}]} for i in range(3)]
    data = pickle.dumps(refs, protocol=2)
    path = tmp_path / "refs(unc).p"
    for i in range(len(data)):
        for value in (0x00, 0x7F, 0x95, 0xFF):
            damaged = bytearray(data)
            damaged[i] = value
            path.write_bytes(bytes(damaged))
            try:
                with parsing(path, "a refer pickle"):
                    load_pickle(path)
            except (AnnotationError, UnsafePickleError) as e:
                assert str(path) in str(e)


def test_a_huge_memo_index_allocates_nothing(tmp_path):
    """A one-byte-damaged LONG_BINPUT index of 2**31 - 1: C's unpickler sizes its memo table from it (16 GB, zeroed);
    the reader must not. Run with 1 GiB of address space to spare, in a child process, so a regression fails cleanly."""
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02]r\xff\xff\xff\x7f.")  # PROTO 2, EMPTY_LIST, LONG_BINPUT 2**31 - 1, STOP
    code = ("import resource, sys\n"
            "from lavis.common.safe_pickle import load_pickle\n"
            "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
            "resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), used + (1 << 30)))\n"
            "print(load_pickle(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


def test_failed_write_keeps_previous_checkpoint_and_names_the_path(tmp_path, monkeypatch):
    save_atomic({"step": torch.tensor(1)}, tmp_path / "checkpoint_00000001.pth")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match=r"checkpoint_00000002\.pth .*No space left.*untouched"):
        save_atomic({"step": torch.tensor(2)}, tmp_path / "checkpoint_00000002.pth")
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "checkpoint_00000001.pth"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_00000001.pth"]  # no temporary left


def test_half_written_file_is_never_resumed_from(tmp_path):
    save_atomic({"step": torch.tensor(1)}, tmp_path / "checkpoint_00000001.pth")
    (tmp_path / ".checkpoint_00000002.pth.tmp-123").write_bytes(b"\x80\x02partial")
    assert latest_checkpoint(tmp_path).name == "checkpoint_00000001.pth"
