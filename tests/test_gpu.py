"""The CUDA path: skipped without a GPU (as on CI); run these first on a GPU machine.

`benchmarks/gpu_check.sh` runs them with the GPU benchmarks in one go.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cacheclip.features.extract import ExtractConfig, extract_dataset
from cacheclip.features.models import load_model
from cacheclip.fit.adapters import AdapterConfig
from cacheclip.fit.train import RunSpec, TrainConfig, predict, train_runs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).parents[1]


def _features(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {s: f[f"splits/{s}/features"][()].astype(np.float32) for s in ("train", "val", "test")} | {
            "aug": f["splits/train/aug_features"][()].astype(np.float32),
            "text": f["text/ensemble"][()],
            "encoded": f["splits/train/encoded"][()],
        }


def _extract(root: Path, model: tuple[Path, Path], device: str, cache: Path, **kw) -> Path:
    loaded = load_model(str(model[0]), str(model[1]), device=device)
    cfg = ExtractConfig(cache_dir=str(cache), aug_views=2, shots=(1, 2), seeds=(1,), dtype="float32", **kw)
    return extract_dataset("eurosat", root, loaded, cfg).store


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("model", ["tiny_clip", "tiny_clip_rn"])
def test_cuda_fp32_features_match_cpu(model, request, make_data, tmp_path):
    make_data("eurosat", n_classes=3, n_train=6, n_val=2, n_test=3)
    files = request.getfixturevalue(model)
    cpu = _features(_extract(tmp_path / "data", files, "cpu", tmp_path / "cpu", workers=0))
    gpu = _features(_extract(tmp_path / "data", files, "cuda", tmp_path / "gpu", workers=2, precision="fp32"))
    assert cpu.keys() == gpu.keys()
    np.testing.assert_array_equal(cpu["encoded"], gpu["encoded"])
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-3, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("model", ["tiny_clip", "tiny_clip_rn"])
def test_cuda_amp_features_are_close_to_fp32(model, request, make_data, tmp_path):
    make_data("eurosat", n_classes=3, n_train=6, n_val=2, n_test=3)
    files = request.getfixturevalue(model)
    fp32 = _features(_extract(tmp_path / "data", files, "cuda", tmp_path / "fp32", workers=2, precision="fp32"))
    amp = _features(_extract(tmp_path / "data", files, "cuda", tmp_path / "amp", workers=2))  # auto = amp
    for key in ("train", "val", "test", "aug"):
        assert _cosine(amp[key], fp32[key]).min() > 0.999, key


def test_train_runs_on_cuda_match_cpu():
    gen = torch.Generator().manual_seed(0)
    views, labels = torch.randn(40, 3, 64, generator=gen), torch.arange(10).repeat(4)
    weights = torch.randn(10, 64, generator=gen)
    runs = [RunSpec(seed, AdapterConfig(kind="both", alpha=0.3, beta=0.2), views, labels) for seed in (1, 2)]
    cfg = TrainConfig(lr=0.01)
    on_cpu = train_runs(runs, weights, 50.0, cfg, epochs=5, device="cpu")
    on_gpu = train_runs(runs, weights, 50.0, cfg, epochs=5, device="cuda")
    for a, b in zip(on_cpu, on_gpu, strict=False):
        for name in a:
            assert b[name].device.type == "cpu"
            torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-5)
        logits_cpu = predict(a, runs[0].adapter, views[:, 0], weights, 50.0)
        logits_gpu = predict(b, runs[0].adapter, views[:, 0], weights, 50.0, device="cuda")
        assert torch.equal(logits_cpu.argmax(1), logits_gpu.argmax(1))


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cacheclip", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def test_cli_extract_and_fit_on_cuda(tiny_clip, make_data, tmp_path):
    make_data("eurosat", n_classes=3, n_train=6, n_val=2, n_test=3)
    model = ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1]), "--cache-dir", str(tmp_path / "c")]
    out = _cli(
        "extract",
        "--dataset",
        "eurosat",
        "--root",
        str(tmp_path / "data"),
        "--device",
        "cuda",
        "--shots",
        "1,2",
        "--seeds",
        "1",
        "--aug-views",
        "2",
        *model,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    out = _cli(
        "fit",
        "--dataset",
        "eurosat",
        "--device",
        "cuda",
        "--shots",
        "1,2",
        "--seeds",
        "1",
        "--epochs",
        "3",
        "--results-dir",
        str(tmp_path / "results"),
        *model,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("result.json")]
    assert len(results) == 2 and all(r["config"]["device"].startswith("cuda") for r in results)


def test_torchrun_on_the_gpus(tiny_clip, make_data, tmp_path):
    """One rank per GPU, two at most (one GPU: torchrun's single-process path)."""
    make_data("eurosat", n_classes=3, n_train=6, n_val=2, n_test=3)
    ranks = min(2, torch.cuda.device_count())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "cacheclip",
        "extract",
        "--dataset",
        "eurosat",
        "--root",
        str(tmp_path / "data"),
        "--model",
        str(tiny_clip[0]),
        "--pretrained",
        str(tiny_clip[1]),
        "--device",
        "cuda",
        "--cache-dir",
        str(tmp_path / "c"),
        "--shots",
        "1",
        "--seeds",
        "1",
        "--aug-views",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("eurosat: encoded") == 1
