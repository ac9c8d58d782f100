"""`cacheclip batch`, `report` and `demo` end to end on generated data and a tiny random-weight model."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cacheclip.batch.runner import BatchConfig, ModelSpec, extract_config, load_config, read_config_file, to_command
from cacheclip.datasets.synthetic import make_dataset
from cacheclip.errors import ConfigError

SMALL = {"n_classes": 3, "n_train": 4, "n_val": 2, "n_test": 3, "image_size": 32}
GRID = ["--shots", "1,2", "--seeds", "1,2", "--epochs", "3", "--aug-views", "2", "--workers", "0", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: torch's thread pool only costs time here (a lot on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real `cacheclip` entry point in-process: (exit code, stdout, stderr)."""
    from cacheclip.cli import common
    from cacheclip.cli.main import main

    common.out.width = common.console.width = 250  # no table wrapping in captured output
    argv, sys.argv = sys.argv, ["cacheclip", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def model_args(tiny_clip) -> list[str]:
    return ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1])]


def result_files(results: Path) -> list[Path]:
    return sorted(results.rglob("result.json"))


def run_ids(results: Path) -> list[tuple]:
    found = [json.loads(p.read_text()) for p in result_files(results)]
    return sorted((r["dataset"], r["method"], r["shots"], r["seed"]) for r in found)


def expected_ids(datasets, shots=(1, 2), seeds=(1, 2), method="clip-adapter") -> list[tuple]:
    return sorted((d, method, k, s) for d in datasets for k in shots for s in seeds)


@pytest.fixture(scope="module")
def done_batch(tmp_path_factory, tiny_clip):
    """One finished batch over eurosat + dtd (results shared read-only by several tests)."""
    base = tmp_path_factory.mktemp("batch")
    for name in ("eurosat", "dtd"):
        make_dataset(name, base / "data", **SMALL)
    args = [
        "batch",
        "--root",
        str(base / "data"),
        "--datasets",
        "eurosat,dtd",
        *model_args(tiny_clip),
        *GRID,
        "--cache-dir",
        str(base / "cache"),
        "--results-dir",
        str(base / "results"),
    ]
    return base, args


# ---------------------------------------------------------------- config


def test_toml_config_flag_override_and_paths(tmp_path):
    toml = tmp_path / "conf" / "batch.toml"
    toml.parent.mkdir()
    toml.write_text(
        'datasets = ["eurosat", "dtd"]\nmodels = [{model = "RN50", pretrained = "openai"},'
        ' {model = "my.json", pretrained = "w.pt"}]\nshots = [1, 4]\nseeds = 7\nalphas = [0.2, 1]\n'
        'epochs = "coop"\nroot = "data"\nresults_dir = "/abs/results"\nfail_fast = true\n'
        'precision = "amp"\n'
    )
    cfg = load_config(toml, {"shots": (2,), "epochs": 5})
    assert cfg.datasets == ("eurosat", "dtd") and cfg.shots == (2,) and cfg.seeds == (7,)
    adapter = cfg.method_config("clip-adapter")  # legacy top-level keys: CLIP-Adapter's settings
    assert adapter.epochs == 5 and adapter.alphas == (0.2, 1.0) and cfg.fail_fast is True
    assert cfg.models == (
        ModelSpec("RN50", "openai"),
        ModelSpec(str(toml.parent / "my.json"), str(toml.parent / "w.pt")),
    )
    assert cfg.root == str(toml.parent / "data") and cfg.results_dir == "/abs/results"
    assert read_config_file(toml).method_config("clip-adapter").epochs is None  # "coop": CoOp's policy
    command = to_command(cfg, datasets=["dtd"], models=cfg.models[:1])
    assert "--datasets dtd --model RN50 --pretrained openai --shots 2 --seeds 7" in command
    assert "--epochs 5" in command and "w.pt" not in command and "--precision amp" in command
    assert extract_config(cfg).precision == "amp"


def test_unknown_or_bad_keys_fail_loudly(tmp_path, capsys):
    toml = tmp_path / "batch.toml"
    toml.write_text('datasets = ["eurosat"]\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError) as e:
        load_config(toml)
    assert "unknown key 'learning_rate'" in e.value.message and "lr" in e.value.hint
    assert "datasets" in e.value.hint and "results_dir" in e.value.hint
    code, _, err = cli(capsys, "batch", "--config", str(toml), "--dry-run")
    assert code == 1 and "unknown key 'learning_rate'" in err and "valid keys:" in err
    toml.write_text('models = [{model = "RN50", weights = "openai"}]\n')
    with pytest.raises(ConfigError, match="unknown key 'weights'"):
        load_config(toml)
    toml.write_text('shots = [1, "two"]\n')
    with pytest.raises(ConfigError, match="'shots' must be a list of integers"):
        load_config(toml)
    with pytest.raises(ConfigError, match="precision bf16 is not supported"):
        load_config(None, {"precision": "bf16"})
    with pytest.raises(Exception, match="unknown dataset 'eurosatt'"):
        load_config(None, {"datasets": ["eurosatt"]})
    assert BatchConfig().dataset_names()[:2] == ["imagenet", "caltech101"]  # coop11


def test_model_pretrained_pairs(capsys, tmp_path):
    code, _, err = cli(
        capsys,
        "batch",
        "--root",
        str(tmp_path),
        "--model",
        "RN50",
        "--model",
        "ViT-B-32",
        "--pretrained",
        "a",
        "--pretrained",
        "b",
        "--pretrained",
        "c",
        "--dry-run",
    )
    assert code == 2 and "give one per model" in err


# ---------------------------------------------------------------- running


def test_dry_run_lists_without_building_a_model(done_batch, capsys, monkeypatch):
    base, args = done_batch
    import cacheclip.features.models

    monkeypatch.setattr(cacheclip.features.models, "load_model", lambda *a, **k: pytest.fail("dry run built a model"))
    code, out, _ = cli(capsys, *args, "--dry-run")
    assert code == 0, out
    assert out.count("store missing") == 2 and "0 runs done, 8 to run" in out
    assert not (base / "cache").exists() and not (base / "results").exists()


def test_batch_completes_then_rerun_skips_everything(done_batch, capsys):
    base, args = done_batch
    code, out, err = cli(capsys, *args)
    assert code == 0, out + err
    assert run_ids(base / "results") == expected_ids(["eurosat", "dtd"])
    assert "2 of 2 datasets done (8 runs trained now, 0 were done)" in out
    logs = list((base / "results").glob("batch-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    for line in (
        "eurosat] extract start",
        "eurosat] extract done",
        "dtd] fit clip-adapter 2-shot: 2 trained",
        "summary: 2 ok, 0 failed",
    ):
        assert line in text
    stamps = {p: p.stat().st_mtime_ns for p in result_files(base / "results")}

    code, out, err = cli(capsys, *args)
    assert code == 0 and "(0 runs trained now, 8 were done)" in out
    assert {p: p.stat().st_mtime_ns for p in result_files(base / "results")} == stamps
    assert (
        "extract start"
        not in max((base / "results").glob("batch-*.log"), key=lambda p: p.stat().st_mtime_ns).read_text()
    )

    code, out, _ = cli(capsys, *args, "--dry-run")
    assert code == 0 and "8 runs done, 0 to run" in out and out.count("up to date") == 2


def test_broken_datasets_fail_alone(tmp_path, tiny_clip, capsys):
    data = tmp_path / "data"
    make_dataset("eurosat", data, **SMALL)
    dtd = make_dataset("dtd", data, **SMALL)
    bad = sorted((dtd / "images").rglob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg at all")
    args = [
        "batch",
        "--root",
        str(data),
        "--datasets",
        "dtd,oxford_pets,eurosat",
        *model_args(tiny_clip),
        *GRID,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results-dir",
        str(tmp_path / "results"),
    ]
    code, out, err = cli(capsys, *args)
    assert code == 1
    assert run_ids(tmp_path / "results") == expected_ids(["eurosat"])
    assert "1 of 3 datasets done" in out
    assert f"dtd: cannot decode {bad}" in err and "oxford_pets: oxford_pets: dataset folder" in err
    assert "retry: cacheclip batch --root" in err and "--datasets dtd --model" in err
    log = next((tmp_path / "results").glob("batch-*.log")).read_text()
    assert "dtd] FAILED" in log and "Traceback" in log and "CorruptImageError" in log

    code, out, err = cli(capsys, *args, "--fail-fast")
    skipped = next(line for line in err.splitlines() if line.startswith("not run (--fail-fast):"))
    assert code == 1 and "oxford_pets" in skipped and "eurosat" in skipped  # stopped after dtd
    assert "cannot decode" in err and "dataset folder" not in err


def test_kill_mid_batch_then_resume(tmp_path, tiny_clip):
    data = tmp_path / "data"
    names = ["eurosat", "dtd", "caltech101"]
    for name in names:
        make_dataset(name, data, **SMALL)
    results = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "cacheclip",
        "batch",
        "--root",
        str(data),
        "--datasets",
        ",".join(names),
        *model_args(tiny_clip),
        "--shots",
        "1,2,4",
        "--seeds",
        "1,2",
        "--aug-views",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results-dir",
        str(results),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not result_files(results) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_with = len(result_files(results))
    print(f"killed after {killed_with} of 18 results")
    assert 0 < killed_with < 18, "the kill should land after the first result and before the last"

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert run_ids(results) == expected_ids(names, shots=(1, 2, 4))
    assert len(result_files(results)) == 18 and f"{18 - killed_with} runs trained now" in done.stdout


# ---------------------------------------------------------------- report


def test_report_numbers_equal_the_jsons(done_batch, capsys, tmp_path):
    base, args = done_batch
    if not result_files(base / "results"):
        assert cli(capsys, *args)[0] == 0
    out_dir = tmp_path / "report"
    code, out, err = cli(capsys, "report", "--results", str(base / "results"), "--out", str(out_dir))
    assert code == 0, err
    assert "| Dataset | Zero-shot | 1-shot | 2-shot |" in out and str(out_dir / "report.png") in err
    png = out_dir / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_cell: dict[tuple, list[float]] = {}
    for path in result_files(base / "results"):
        r = json.loads(path.read_text())
        by_cell.setdefault((r["dataset"], r["shots"]), []).append(r["metrics"]["test"]["top1"])
    rows = list(csv.DictReader((out_dir / "report.csv").open()))
    assert {(r["dataset"], int(r["shots"])) for r in rows} == set(by_cell)
    for row in rows:
        values = by_cell[(row["dataset"], int(row["shots"]))]
        assert math.isclose(float(row["mean"]), statistics.mean(values), abs_tol=1e-4)
        assert math.isclose(float(row["std"]), statistics.stdev(values), abs_tol=1e-4)
        assert int(row["n_seeds"]) == len(values)

    code, out, _ = cli(
        capsys,
        "report",
        "--results",
        str(base / "results"),
        "--out",
        str(out_dir),
        "--datasets",
        "eurosat,oxford_pets",
        "--shots",
        "2",
        "--seeds",
        "1,2,3",
    )
    assert code == 0
    assert "dtd" not in out and "| oxford_pets | — | — |" in out
    assert "missing: eurosat 2-shot seeds 3" in out and "1-shot" not in out


def test_report_without_results_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "report", "--results", str(tmp_path / "empty"))
    assert code == 1 and "no cacheclip results found" in err


# ---------------------------------------------------------------- demo


def test_demo_end_to_end(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cacheclip", "demo", "--out", str(tmp_path / "demo")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SYNTHETIC" in done.stderr and "synthetic (random model)" in done.stdout
    assert "cacheclip batch --root /data/coop --datasets coop11" in done.stdout
    for name in ("report.md", "report.csv", "report.png"):
        assert (tmp_path / "demo" / "report" / name).stat().st_size > 0
    side_by_side = done.stdout[done.stdout.index("## Methods side by side") :]  # the fast methods, side by side
    for label in ("Zero-shot CLIP", "CLIP-Adapter", "Tip-Adapter", "GDA", "LP++"):
        assert f"| {label} |" in side_by_side, label
    lines = [line for line in done.stdout.splitlines() if "-shot: CLIP-Adapter" in line]
    assert len(lines) == 4
    ours, zero_shot = (float(v) for v in lines[-1].replace("%", "").split()[2:6:3])
    assert ours > zero_shot + 30, lines[-1]
    assert seconds < 90, f"demo took {seconds:.0f}s"
    print(f"demo wall time {seconds:.1f}s")


def test_results_table_shows_chosen_values_of_any_type():
    from cacheclip.cli.common import results_table

    run = {
        "dataset": "dtd",
        "method": "cross-modal",
        "shots": 1,
        "seed": 1,
        "metrics": {"test": {"top1": 50.0}},
        "zero_shot": {"test": {"top1": 5.0}},
        "selection": {"chosen": {"lr": 0.001, "init": "zeroshot"}},
    }
    table = results_table([run], (1,))
    assert table.row_count == 1 and "lr=0.001, init=zeroshot" in table.columns[-1]._cells[0]
