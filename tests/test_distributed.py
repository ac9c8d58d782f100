"""torchrun extraction (gloo, 2 CPU processes) writes the store a single process writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from cacheclip.features.distributed import SINGLE, Dist, shard
from cacheclip.features.extract import ExtractConfig, extract_dataset

REPO = Path(__file__).parents[1]


def torchrun(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cacheclip",
        "extract",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def read_store(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: v for k, v in f.attrs.items() if k != "committed_at"}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_shard_covers_everything_once():
    items = list(range(11))
    parts = [shard(items, Dist(rank=r, world=3)) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7, 10]
    assert shard(items, SINGLE) == items


def test_two_ranks_write_the_single_process_store(tmp_path, make_data, tiny_clip, tiny_loaded):
    make_data("eurosat", n_classes=3, n_train=5, n_val=2, n_test=3)
    root = tmp_path / "data"
    common = [
        "--dataset",
        "eurosat",
        "--root",
        str(root),
        "--model",
        str(tiny_clip[0]),
        "--pretrained",
        str(tiny_clip[1]),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--aug-views",
        "2",
        "--shots",
        "1,2",
        "--seeds",
        "1",
    ]
    out = torchrun([*common, "--cache-dir", str(tmp_path / "multi")])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("eurosat: encoded") == 1  # rank 0 alone reports
    single = extract_dataset(
        "eurosat",
        root,
        tiny_loaded,
        ExtractConfig(cache_dir=str(tmp_path / "single"), aug_views=2, shots=(1, 2), seeds=(1,), workers=0),
    )
    multi_path = tmp_path / "multi" / single.store.relative_to(tmp_path / "single")
    a, b = read_store(multi_path), read_store(single.store)
    assert a.keys() == b.keys()
    for key in b:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    assert not (multi_path.parent / (multi_path.name + ".parts")).exists()


def test_a_failing_rank_fails_every_rank_without_hanging(tmp_path, make_data, tiny_clip):
    folder = make_data("eurosat", n_classes=2, n_train=4, n_val=2, n_test=2)
    broken = sorted((folder / "2750").rglob("*.jpg"))[1]  # lands in one rank's shard
    broken.write_bytes(b"not a jpeg")
    out = torchrun(
        [
            "--dataset",
            "eurosat",
            "--root",
            str(tmp_path / "data"),
            "--model",
            str(tiny_clip[0]),
            "--pretrained",
            str(tiny_clip[1]),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--train",
            "all",
        ],
        timeout=180,
    )
    assert out.returncode != 0
    assert "cannot decode" in out.stderr and broken.name in out.stderr


def test_single_process_is_the_default(monkeypatch):
    from cacheclip.features.distributed import from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env("cpu") == SINGLE and not SINGLE.active and SINGLE.is_main
