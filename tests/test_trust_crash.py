"""Issue 14, crash safety and the environment: a real SIGKILL of extract with workers, symlinked
locks, a dead writer's temporaries, unreadable metadata, and environment faults that must read as
one `error:` line with a hint (never "unexpected")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from stores import clustered

from cacheclip.common import atomic_path, stale_temporaries
from cacheclip.errors import ModelLoadError, StoreLockedError
from cacheclip.features import store as st
from cacheclip.features.check import check_store
from cacheclip.features.extract import ExtractConfig, extract_dataset
from cacheclip.features.models import load_model
from cacheclip.fit.predict import FittedRun, load_model_for

SLOW_EXTRACT = """
import sys, time
import cacheclip.features.extract as ex
import cacheclip.features.pipeline as pl
ex.CHUNK_FORWARDS = 1
forward = pl.encode_batch
def slow_forward(*args, **kwargs):
    time.sleep(0.3)
    return forward(*args, **kwargs)
pl.encode_batch = slow_forward
read = pl.ImageReader.__getitem__
import torch
def stuck_read(self, i):  # workers busy (not idle, where torch's own watchdog would end them)
    if i >= 4 and torch.utils.data.get_worker_info() is not None:
        time.sleep(60)
    return read(self, i)
pl.ImageReader.__getitem__ = stuck_read
from cacheclip.cli.main import main
sys.argv = ["cacheclip", *sys.argv[1:]]
main()
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_kill_9_of_extract_with_workers_leaves_no_worker_and_no_lock(tmp_path, make_data, tiny_clip, tiny_loaded):
    folder = make_data("eurosat", n_test=12)
    cache = tmp_path / "cache"
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_EXTRACT)
    args = ["extract", "-d", "eurosat", "--root", folder.parent, "-m", tiny_clip[0], "-p", tiny_clip[1]]
    args += ["--cache-dir", cache, "--batch-size", 2, "--workers", 2, "--train", "all", "--aug-views", 1]
    path = st.store_path(cache, tiny_loaded.model_id, tiny_loaded.weights_id, "eurosat")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, driver, *map(str, args)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (st.parts_dir(path).is_dir() and list(st.parts_dir(path).glob("*.h5"))):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        workers = _children(proc.pid)
        assert len(workers) >= 2  # the DataLoader workers are running
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    gone_by = time.monotonic() + 3  # a stuck worker would live 60 s
    while any(_alive(w) for w in workers) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "a worker outlived its killed parent"
    with st.writer_lock(path):  # taken at once: nothing holds the lock
        pass
    cfg = ExtractConfig(cache_dir=str(cache), workers=0, batch_size=8, train="all", aug_views=1)
    summary = extract_dataset("eurosat", folder.parent, tiny_loaded, cfg)
    with st.open_store(path) as s:  # resumed to the end, and sound
        assert summary.total["test"] == len(s.listing("test").paths) and check_store(path).ok


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    path = tmp_path / "cache" / "m" / "w" / "toy.h5"
    path.parent.mkdir(parents=True)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    path.with_name("toy.h5.lock").symlink_to(target)
    with pytest.raises(StoreLockedError, match="is a symlink"):
        with st.writer_lock(path):
            pass
    assert target.read_text() == "keep me"


def test_a_dead_writers_temporaries_are_listed_then_removed_by_the_next_writer(tmp_path):
    path = clustered(tmp_path / "cache", "eurosat")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = path.with_name(f".{path.name}.999999999-abcd1234.tmp")
        legacy = path.with_name(f".{path.name}.k3j4h5g6.tmp")  # written before names held a pid
        live = path.with_name(f".{path.name}.{sleeper.pid}-abcd1234.tmp")
        for tmp in (dead, legacy, live):
            tmp.write_bytes(b"x" * 1000)
        assert set(stale_temporaries(path.parent, path.name)) == {dead, legacy}
        assert any("2 temporaries left by a killed writer" in p for p in check_store(path).problems)
        with st.writer_lock(path):
            pass
        assert not dead.exists() and not legacy.exists() and live.exists()  # a live writer's stays
    finally:
        sleeper.kill()


def test_atomic_temporaries_are_exclusive_unpredictable_and_in_the_destination(tmp_path):
    out = tmp_path / "out.npz"
    with atomic_path(out) as first, atomic_path(out) as second:
        assert first != second and first.parent == tmp_path and str(os.getpid()) in first.name
        assert first.exists() and not first.is_symlink()


def test_an_unreadable_parts_marker_and_a_damaged_part_are_set_aside_and_re_encoded(tmp_path, make_data, tiny_loaded):
    folder = make_data("eurosat", n_test=4)
    cfg = ExtractConfig(cache_dir=str(tmp_path / "cache"), workers=0, batch_size=4, train="all", aug_views=0)
    path = st.store_path(cfg.cache_dir, tiny_loaded.model_id, tiny_loaded.weights_id, "eurosat")
    parts = st.parts_dir(path)
    parts.mkdir(parents=True)
    (parts / "identity.json").write_text("")  # a full disk while an older version wrote it
    summary = extract_dataset("eurosat", folder.parent, tiny_loaded, cfg)
    assert any("identity.json was unreadable" in n for n in summary.notes) and check_store(path).ok
    # a part damaged after it was written (flipped bytes in its features) is set aside and redone
    st.write_part(path, st.Chunk("test", np.arange(2), np.ones((2, tiny_loaded.embed_dim), np.float16), None))
    part = next(parts.glob("*.h5"))
    with h5py.File(part, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(part, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 16)
    again = extract_dataset("eurosat", folder.parent, tiny_loaded, cfg)
    assert any("was unreadable: set aside" in n for n in again.notes) and check_store(path).ok


# ---------------------------------------------------------------- the environment, through the CLI


def _clean_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert "unexpected" not in err and "Traceback" not in err, err
    assert "error:" in err and "hint:" in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_output_folders_that_cannot_be_written_fail_before_any_work(tmp_path, cli):
    clustered(tmp_path / "cache", "eurosat")
    a_file = tmp_path / "results-file"
    a_file.write_text("")
    fit = ["fit", "-d", "eurosat", "--model", "RN50", "--pretrained", "none", "--cache-dir", tmp_path / "cache"]
    code, _, err = cli(*fit, "--results-dir", a_file)
    _clean_error(code, err, f"--results-dir {a_file}: is a file, not a folder")
    code, _, err = cli(*fit, "--results-dir", "/proc/cacheclip-results")
    _clean_error(code, err, "--results-dir /proc/cacheclip-results: cannot be created in /proc")
    code, _, err = cli(*fit, "--results-dir", tmp_path / ("x" * 300))
    _clean_error(code, err, "too long")


def test_export_into_a_folder_and_an_empty_dataset_list_are_named(tmp_path, cli):
    clustered(tmp_path / "cache", "eurosat")
    base = ["--model", "RN50", "--pretrained", "none", "--cache-dir", tmp_path / "cache"]
    code, _, err = cli("export", "-d", "eurosat", "--split", "test", "--out", tmp_path, *base)
    _clean_error(code, err, f"--out {tmp_path} is a folder")
    code, _, err = cli("extract", "--dataset", "", *base)
    _clean_error(code, err, "--dataset is empty")


def test_batch_dry_run_validates_like_the_real_run(tmp_path, cli):
    toml = tmp_path / "b.toml"
    a_file = tmp_path / "file"
    a_file.write_text("")
    for body, fragment in [
        ('datasets = ["eurosat"]\ndevice = "tpu"\n', "unknown --device tpu"),
        (f'datasets = ["eurosat"]\nresults_dir = "{a_file}"\n', "is a file, not a folder"),
    ]:
        toml.write_text(body)
        code, _, err = cli("batch", "--config", toml, "--dry-run")
        _clean_error(code, err, fragment)
    toml.write_bytes(b'datasets = ["caf\xe9"]\n')  # not UTF-8
    code, _, err = cli("batch", "--config", toml, "--dry-run")
    assert code == 1 and "unexpected" not in err and "UTF-8" in err, err


def test_predict_checks_the_weights_actually_loaded_even_without_a_checkpoint_file(tiny_clip, tmp_path):
    """A run of random-init weights (no file hash to compare) is refused with other weights; a
    renamed config of identical content is accepted (content is compared, not names)."""
    config, checkpoint = tiny_clip
    loaded = load_model(str(config), str(checkpoint))
    ident = {**loaded.identity(), "state_sha256": loaded.state_sha256, "model_config_path": str(config)}
    run = FittedRun(tmp_path, "clip-adapter", ["a"], lambda x: x, {**ident, "pretrained": "none"})
    with pytest.raises(ModelLoadError, match="is not the one the run was trained on"):
        load_model_for(run, pretrained="none")  # fresh random weights: another state hash
    renamed = tmp_path / "renamed-config.json"
    renamed.write_bytes(Path(config).read_bytes())
    run = FittedRun(tmp_path, "clip-adapter", ["a"], lambda x: x, {**ident, "pretrained": "file"})
    assert load_model_for(run, model=str(renamed), pretrained=str(checkpoint)).state_sha256 == loaded.state_sha256


def test_odd_inputs_read_as_user_errors(tmp_path, cli):
    text = tmp_path / "weights.txt"
    text.write_text("hello\n")
    code, _, err = cli("extract", "-d", "eurosat", "--root", tmp_path, "-m", "RN50", "-p", text)
    _clean_error(code, err, "not a PyTorch or safetensors checkpoint")
    code, _, err = cli("fit", "-d", "eurosat", "--seeds", "99999999999999999999", "--pretrained", "none")
    _clean_error(code, err, "each seed must be in 0..2147483647")
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter.safetensors").write_bytes(b"garbage, not safetensors")
    code, _, err = cli("predict", "--run", run, text)
    _clean_error(code, err, "a saved adapter file is damaged")
