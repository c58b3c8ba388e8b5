"""Every command-line entry point answers --help as a fresh install runs it: from a folder outside the repository,
with the repository not on PYTHONPATH, so only the installed `lavis` package is importable (not `tools` or `tests`).
A script that imports another script, or anything outside `lavis`, fails here although it passes under pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "tools").glob("*.py")) + ["train.py", "evaluate.py"]


def outside_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("elsewhere")
    assert REPO not in folder.resolve().parents
    return folder


# Runs in a fresh interpreter outside the repository: imports `lavis` (the import every script pays, 3-5 s of torch,
# transformers, ...) once, then forks one child per script, which runs it as `python SCRIPT --help` would (its own
# folder first on sys.path, __name__ "__main__") and exits with its status; prints {script: [status, output]}.
FORKING_RUNNER = """
import json, os, runpy, sys, traceback
import lavis  # noqa: F401
results = {}
for script in json.loads(sys.argv[1]):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        sys.argv, sys.path[0] = [script, "--help"], os.path.dirname(script)
        status = 0
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            status = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, errors="replace") as pipe:
        output = pipe.read()
    results[script] = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), output]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_runs(outside: Path) -> dict[str, tuple[int, str]]:
    scripts = json.dumps([str(REPO / s) for s in SCRIPTS])
    result = subprocess.run([sys.executable, "-c", FORKING_RUNNER, scripts], cwd=outside, env=outside_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {str(Path(k).relative_to(REPO)): tuple(v) for k, v in json.loads(result.stdout).items()}


def test_the_repository_is_not_importable_from_outside(outside: Path):
    """The premise of the --help test: there, `tools` and `tests` are not importable and `lavis` is installed."""
    probe = ("import importlib.util as u; print(u.find_spec('tools') is None, u.find_spec('tests') is None, "
             "u.find_spec('lavis') is not None)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=outside, env=outside_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["True", "True", "True"], result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_works_from_a_fresh_install(script: str, help_runs: dict[str, tuple[int, str]]):
    status, output = help_runs[script]
    assert status == 0, f"{script} --help exited {status}:\n{output[-3000:]}"
    assert "usage:" in output


def test_the_shard_writer_help_in_its_own_interpreter(outside: Path):
    """The command the tester ran, with nothing imported beforehand."""
    result = subprocess.run([sys.executable, str(REPO / "tools" / "write_region_shards.py"), "--help"], cwd=outside,
                            env=outside_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--refer-root" in result.stdout and "--scanrefer-root" in result.stdout


@pytest.mark.parametrize("script", ["tools/precompute_features.py", "tools/benchmark.py",
                                    "tools/pretrain_tiny_encoders.py"])
def test_a_config_error_is_one_message_in_every_config_tool(script: str, tmp_path: Path, monkeypatch, capsys):
    """The tools that read a run YAML report a configuration mistake as train.py does: one line naming the key,
    exit status 2, no traceback (run as `python SCRIPT ...` runs it, in this interpreter)."""
    import runpy

    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {arch: regionblip, model_type: tiny}\nrun: {max_epochs: 3}\n")
    extra = ["--out", str(tmp_path / "out")] if "pretrain" in script else []
    monkeypatch.setattr(sys, "argv", [script, "--cfg-path", str(cfg), *extra])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / script), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-3000:]
    assert "Traceback" not in err and err.startswith("config error:") and "run.max_epochs" in err
