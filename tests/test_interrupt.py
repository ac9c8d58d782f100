"""Ctrl-C (a real SIGINT to a subprocess) during extract, fit and batch: one line saying what was
kept and the command that resumes, exit code 130, and the resumed run finishes the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cacheclip.features import store as st

# The real CLI, slowed down where the interrupt should land: before each image forward
# (extract; one batch per chunk) or in every training step (fit).
DRIVER = """
import sys, time
import cacheclip.features.extract as ex
import cacheclip.features.pipeline as pl
import cacheclip.fit.train as tr
ex.CHUNK_FORWARDS = 1
forward, step = pl.encode_batch, tr.train_runs
def slow_forward(*args, **kwargs):
    time.sleep(0.05)
    return forward(*args, **kwargs)
def slow_train(*args, **kwargs):
    time.sleep(0.5)
    return step(*args, **kwargs)
pl.encode_batch = slow_forward
import cacheclip.fit.methods.clip_adapter as ca
ca.train_runs = slow_train
from cacheclip.cli.main import main
sys.argv = ["cacheclip", *sys.argv[1:]]
main()
"""


def _interrupt(tmp_path: Path, args: list, ready) -> subprocess.CompletedProcess:
    """Run the CLI, send SIGINT once ``ready()`` holds, return how it ended."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CI": "1"}
    proc = subprocess.Popen(
        [sys.executable, driver, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job starts with SIGINT ignored, and Python then keeps ignoring it:
        # give the child the default, as a terminal's Ctrl-C finds it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached the point to interrupt"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _resume_line(err: str) -> str:
    [line] = [line for line in err.splitlines() if line.startswith("interrupted:")]
    return line


def test_ctrl_c_during_extract_keeps_chunks_and_names_the_resume_command(tiny_clip, tiny_loaded, make_data, tmp_path):
    folder = make_data("eurosat", n_test=10)
    cache = tmp_path / "cache"
    args = ["extract", "-d", "eurosat", "--root", folder.parent, "-m", tiny_clip[0], "-p", tiny_clip[1]]
    args += ["--cache-dir", cache, "--batch-size", 4, "--workers", 0, "--train", "all", "--aug-views", 2]
    path = st.store_path(cache, tiny_loaded.model_id, tiny_loaded.weights_id, "eurosat")
    done = _interrupt(tmp_path, args, lambda: len(list(st.parts_dir(path).glob("*.h5"))) >= 2)
    assert done.returncode == 130, done.stderr
    line = _resume_line(done.stderr)
    assert "finished chunk" in line and "resume with: cacheclip extract -d eurosat" in line
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    kept = sum(len(v) for v in st.staged_indices(path).values())
    assert kept >= 8  # what was encoded before the interrupt is still there
    resumed = subprocess.run(
        [sys.executable, "-m", "cacheclip", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    with st.open_store(path) as store:
        assert len(store.encoded("test")) == len(store.listing("test").paths)


def test_ctrl_c_during_fit_keeps_finished_runs(tiny_clip, make_data, tmp_path):
    folder = make_data("eurosat", n_test=4)
    model = ["-m", tiny_clip[0], "-p", tiny_clip[1], "--cache-dir", tmp_path / "cache"]
    extract = ["extract", "-d", "eurosat", "--root", folder.parent, *model, "--workers", 0, "--aug-views", 1]
    extract += ["--shots", "1,2", "--seeds", "1"]
    subprocess.run([sys.executable, "-m", "cacheclip", *map(str, extract)], check=True, capture_output=True)
    results = tmp_path / "results"
    args = ["fit", "-d", "eurosat", *model, "--results-dir", results, "--shots", "1,2", "--seeds", "1", "--epochs", 2]
    done = _interrupt(tmp_path, args, lambda: len(list(results.rglob("result.json"))) >= 1)
    assert done.returncode == 130, done.stderr
    line = _resume_line(done.stderr)
    assert "finished run is kept" in line and "resume with: cacheclip fit -d eurosat" in line
    assert len(list(results.rglob("result.json"))) == 1  # the 1-shot run; the 2-shot one was cut
    assert not list(results.rglob("*.tmp"))  # nothing half-written
