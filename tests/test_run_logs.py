"""Run logs stay readable: progress is a tqdm bar on a terminal and plain periodic lines otherwise, an evaluation's
log file is named for it, and a run's log states the world once and says when captions are being scored."""

from __future__ import annotations

import io
import logging

import pytest
from tqdm import tqdm

from lavis.common.metric_log import PlainProgress, progress
from tests.conftest import write_yaml


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def progress_lines():
    handler, logger = Records(), logging.getLogger("lavis.progress")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_pipe_gets_plain_lines(monkeypatch, progress_lines):
    monkeypatch.setattr("sys.stderr", Terminal())
    bar = progress(5, "epoch 0", enabled=True)
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr("sys.stderr", io.StringIO())  # redirected to a file or a pipe
    assert list(progress(range(3), "eval coco", enabled=True)) == [0, 1, 2]
    assert len(progress_lines) == 1 and progress_lines[0].startswith("eval coco: 3/3 (100%), ")
    assert "done in" in progress_lines[0]


def test_plain_lines_come_every_interval_with_rate_remaining_time_and_postfix(progress_lines):
    now = [0.0]
    report = PlainProgress(None, total=100, desc="epoch 2", enabled=True, initial=20, every_s=30.0,
                           clock=lambda: now[0])
    for _ in range(10):  # 10 steps in 20 s: no line before 30 s have passed
        now[0] += 2.0
        report.update()
    assert progress_lines == []
    report.set_postfix(loss="1.2345", lr="1.00e-04")
    now[0] += 10.0
    report.update()  # 11 steps since the start (resumed at 20) in 30 s
    assert progress_lines == ["epoch 2: 31/100 (31%), 0.37 it/s, 3m08s left; loss=1.2345, lr=1.00e-04"]
    now[0] += 5.0
    report.update(69)
    report.close()
    report.close()  # once
    assert progress_lines[1:] == ["epoch 2: 100/100 (100%), 2.29 it/s, done in 35s; loss=1.2345, lr=1.00e-04"]


def test_a_disabled_report_is_silent(monkeypatch, progress_lines):
    monkeypatch.setattr("sys.stderr", Terminal())  # even on a terminal: ranks other than 0 show nothing
    report = progress(range(4), "eval coco", enabled=False)
    assert list(report) == [0, 1, 2, 3] and progress_lines == []


def test_an_evaluation_logs_to_its_own_file_with_the_world_and_the_scoring(tmp_path):
    from evaluate import main as evaluate_main
    from tests.test_evaluate import eval_config

    evaluate_main(["--cfg-path", str(write_yaml(tmp_path / "eval.yaml", eval_config(tmp_path, "ev")))])
    out = tmp_path / "ev"
    assert not (out / "train_rank0.log").exists()
    logged = (out / "eval_rank0.log").read_text()
    assert logged.count("world size 1 (1 node(s) x 1 process(es)), backend none (one process)") == 1
    assert f"scoring 16 captions against {tmp_path / 'gt.json'} with BLEU-1..4, METEOR, ROUGE_L, CIDEr" in logged
    assert "scored 16 captions against" in logged
    assert "lavis.progress: eval set_a: 6/6 (100%)" in logged  # pytest's stderr is no terminal: plain lines
