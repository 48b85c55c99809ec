"""benchmarks/gpu_session.sh: the steps a session with a GPU runs through the device tool.

It cannot run for real here, so `python3`, `nvidia-smi` and `git` are stubs that record their arguments: what is
tested is the script's own contract with the device tool (one archive and one log per step under $OUT, the step's
exit status, the commands it runs and their time limits)."""
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")

STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
case "$*" in
    *"-m pytest"*) exit "${STUB_PYTEST_RC:-0}" ;;
    *"import fusegan.kernels"*) exit "${STUB_NOT_INSTALLED:-0}" ;;
    *"get_device_capability"*) echo 90 ;;
    *"sleep-forever"*) sleep 30 ;;
esac
exit 0
"""


def run_step(tmp_path, *args, **env):
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("python3", "nvidia-smi", "git"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    out = tmp_path / "out"
    stub_log = tmp_path / "calls.log"
    full_env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", OUT=str(out), STUB_LOG=str(stub_log), **env)
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=120)
    calls = stub_log.read_text().splitlines() if stub_log.exists() else []
    return proc, out, calls


def archive_names(path):
    with tarfile.open(path) as tar:
        return {Path(name).name for name in tar.getnames()}


def test_tests_step_precompiles_runs_gpu_tests_and_packs_one_archive(tmp_path):
    proc, out, calls = run_step(tmp_path, "tests", FUSEGAN_COMMIT="abc123")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["tests.log", "tests.tgz"]   # the tool brings back 8 files
    assert {"versions.txt", "tests.log"} <= archive_names(out / "tests.tgz")
    python_calls = [c for c in calls if c.startswith("python3 -m ")]
    assert "benchmarks.hopper_compile --arch 90" in python_calls[0]              # the cache is warmed first
    assert "pytest -m gpu" in python_calls[1]
    assert not any("pip install" in c for c in calls)                            # already installed
    log = (out / "tests.log").read_text()
    assert "commit: abc123" in log and "command: bash benchmarks/gpu_session.sh tests" in log


def test_step_exit_status_is_the_main_commands(tmp_path):
    proc, out, _ = run_step(tmp_path, "tests", STUB_PYTEST_RC="1")
    assert proc.returncode == 1
    assert (out / "tests.tgz").exists()                                          # results come back anyway


def test_fresh_machine_installs_the_package_first(tmp_path):
    proc, _, calls = run_step(tmp_path, "quick", STUB_NOT_INSTALLED="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    python_calls = [c for c in calls if c.startswith("python3 -m ")]
    assert "pip install" in python_calls[0] and "--no-deps" in python_calls[0]
    assert "benchmarks all --quick" in python_calls[-1]


def test_commands_get_what_is_left_of_the_budget(tmp_path):
    # A 40 s budget leaves nothing for the precompile (it reserves 200 s for the benchmark): it is skipped, and
    # the benchmark gets the rest minus the time kept for packing.
    proc, out, calls = run_step(tmp_path, "train", BUDGET_S="40")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any("hopper_compile" in c for c in calls)
    log = (out / "train.log").read_text()
    assert "skipped (no time left): python3 -m benchmarks.hopper_compile" in log
    assert "train.stylegan2.paper256" in [c for c in calls if "benchmarks train" in c][0]


def test_a_command_past_its_limit_is_stopped_and_the_step_still_returns_its_archive(tmp_path):
    # profile's first command sleeps 30 s; with 30 s for the step it gets 15 (15 kept for packing) and is
    # stopped; nothing is left for the second.
    proc, out, _ = run_step(tmp_path, "profile", "sleep-forever", BUDGET_S="30")
    assert proc.returncode == 124                                                # coreutils timeout's status
    log = (out / "profile.log").read_text()
    assert "exit 124: python3 -m benchmarks.profile sleep-forever --variant fusegan" in log
    assert "skipped (no time left): python3 -m benchmarks.profile sleep-forever --variant eager" in log
    assert (out / "profile.tgz").exists()


def test_profile_needs_a_case_and_unknown_steps_fail(tmp_path):
    assert run_step(tmp_path, "profile")[0].returncode == 2
    assert run_step(tmp_path, "bogus")[0].returncode == 2


def test_suite_step_runs_the_tests_not_marked_gpu(tmp_path):
    proc, out, calls = run_step(tmp_path, "suite")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (pytest_call,) = [c for c in calls if "-m pytest" in c]
    assert "-m not gpu" in pytest_call and "--junitxml" in pytest_call
    assert sorted(p.name for p in out.iterdir()) == ["suite.log", "suite.tgz"]
