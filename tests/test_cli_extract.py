"""`cacheclip extract | ls | export` through the real entry point: every user error is one
`error:` line plus a `hint:` line and exit code 1 (bad option values: exit 2), no traceback."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cacheclip.features import store as st


@pytest.fixture
def tiny_args(tiny_clip, tmp_path) -> list:
    return ["-m", tiny_clip[0], "-p", tiny_clip[1], "--cache-dir", tmp_path / "cache"]


def _extract(cli, root: Path, tiny_args: list, *extra, dataset: str = "eurosat"):
    return cli(
        "extract",
        "-d",
        dataset,
        "--root",
        root,
        *tiny_args,
        "--workers",
        0,
        "--aug-views",
        2,
        "--shots",
        "1,2",
        "--seeds",
        "1",
        *extra,
    )


def _user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    lines = err.strip().splitlines()
    assert lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


# ---------------------------------------------------------------- success paths


def test_extract_ls_export(cli, coop_root, tiny_args, tmp_path):
    code, out, err = _extract(cli, coop_root, tiny_args)
    assert code == 0, err
    assert "eurosat: encoded train" in out and "(text re-encoded)" in out
    code, out, _ = _extract(cli, coop_root, tiny_args)
    assert code == 0 and "encoded nothing new" in out

    code, out, _ = cli("ls", "--cache-dir", tmp_path / "cache")
    assert code == 0
    row = next(line for line in out.splitlines() if "eurosat" in line)
    assert "cacheclip-tiny-vit" in row and "float16" in row and "12/12" in row  # val 12/12, test 12/12

    for split, n in (("train", None), ("test", 12)):
        npz = tmp_path / f"{split}.npz"
        code, out, err = cli("export", "-d", "eurosat", "--split", split, "-o", npz, *tiny_args)
        assert code == 0, err
        with np.load(npz) as z:
            n = n or len(z["labels"])
            assert z["features"].shape == (n, 32) and z["features"].dtype == np.float32
            assert z["labels"].shape == (n,) and z["paths"].shape == (n,)
            assert z["classnames"].shape == (4,) and z["classnames"][0] == "Annual Crop Land"
            assert z["text_features"].shape == (1, 4, 32) and z["text_ensemble"].shape == (4, 32)
            assert z["templates"].tolist() == ["a centered satellite photo of {}."]
            if split == "train":
                assert z["aug_features"].shape == (2, n, 32)
            else:
                assert "aug_features" not in z.files
            store = next((tmp_path / "cache").glob("*/*/eurosat.h5"))
            with st.open_store(store) as s:
                feats, labels, aug = s.read(split, aug=True)
                np.testing.assert_array_equal(z["features"], feats)
                np.testing.assert_array_equal(z["labels"], labels)
                if aug is not None:
                    np.testing.assert_array_equal(z["aug_features"], aug.transpose(1, 0, 2))
                assert z["paths"].tolist() == [s.listing(split).paths[i] for i in s.encoded(split)]


@pytest.mark.parametrize(
    "bf16, precision, noted", [(True, "auto", True), (True, "fp32", False), (False, "auto", False)]
)
def test_bf16_cpus_get_a_note_about_amp(cli, coop_root, tiny_args, monkeypatch, bf16, precision, noted):
    import cacheclip.features.models

    monkeypatch.setattr(cacheclip.features.models, "cpu_has_bf16", lambda: bf16)
    code, _, err = _extract(cli, coop_root, tiny_args, "--device", "cpu", "--precision", precision)
    assert code == 0, err
    assert ("--precision amp encodes much faster" in " ".join(err.split())) == noted


def test_ls_with_no_stores(cli, tmp_path):
    code, _, err = cli("ls", "--cache-dir", tmp_path / "nothing")
    assert code == 0 and "no stores under" in err


# ---------------------------------------------------------------- user errors: exit 1, one line + hint


def test_unknown_dataset_lists_the_names(cli, coop_root, tiny_args):
    code, _, err = _extract(cli, coop_root, tiny_args, dataset="eurosatt")
    _user_error(code, err, "unknown dataset 'eurosatt'", "eurosat", "imagenet", "fgvc_aircraft")


def test_missing_dataset_folder(cli, tiny_args, tmp_path):
    (tmp_path / "empty_root").mkdir()
    code, _, err = _extract(cli, tmp_path / "empty_root", tiny_args)
    _user_error(code, err, "dataset folder", "eurosat", "not found")


def test_missing_split_file(cli, make_data, tiny_args):
    folder = make_data("eurosat")
    (folder / "split_zhou_EuroSAT.json").unlink()
    code, _, err = _extract(cli, folder.parent, tiny_args)
    _user_error(code, err, "split_zhou_EuroSAT.json")


def test_images_listed_but_missing(cli, make_data, tiny_args):
    folder = make_data("eurosat")
    gone = sorted((folder / "2750").rglob("*.jpg"))[:3]
    for p in gone:
        p.unlink()
    code, _, err = _extract(cli, folder.parent, tiny_args, "--train", "all")
    _user_error(code, err, "3 of 48 images", "missing", gone[0].relative_to(folder / "2750").as_posix())


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named(workers, cli, make_data, tiny_args):
    folder = make_data("eurosat")
    bad = sorted((folder / "2750").rglob("*.jpg"))[5]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    code, _, err = cli(
        "extract",
        "-d",
        "eurosat",
        "--root",
        folder.parent,
        *tiny_args,
        "--workers",
        workers,
        "--train",
        "all",
        "--aug-views",
        0,
    )
    _user_error(code, err, f"cannot decode {bad}", "replace or delete the file")


def test_unknown_model_suggests_close_names(cli, coop_root, tmp_path):
    code, _, err = cli("extract", "-d", "eurosat", "--root", coop_root, "-m", "RN5O", "--cache-dir", tmp_path)
    _user_error(code, err, "unknown model 'RN5O'", "did you mean", "RN50")


def test_pretrained_neither_tag_nor_file(cli, coop_root, tiny_clip, tmp_path):
    code, _, err = cli(
        "extract", "-d", "eurosat", "--root", coop_root, "-m", "RN50", "-p", "opneai", "--cache-dir", tmp_path
    )
    _user_error(code, err, "neither a tag of RN50 nor an existing file", "openai")
    code, _, err = cli(
        "extract",
        "-d",
        "eurosat",
        "--root",
        coop_root,
        "-m",
        tiny_clip[0],
        "-p",
        tmp_path / "missing.pt",
        "--cache-dir",
        tmp_path,
    )
    _user_error(code, err, "missing.pt", "neither a tag")


def test_store_locked_and_store_mismatch(cli, coop_root, tiny_args, tiny_loaded, tmp_path):
    path = st.store_path(tmp_path / "cache", tiny_loaded.model_id, tiny_loaded.weights_id, "eurosat")
    with st.writer_lock(path):
        code, _, err = _extract(cli, coop_root, tiny_args)
    _user_error(code, err, "another process", "is writing", "resumes")
    assert _extract(cli, coop_root, tiny_args)[0] == 0
    code, _, err = _extract(cli, coop_root, tiny_args, "--dtype", "float32")
    _user_error(code, err, "was built from other inputs", "dtype: store has 'float16', asked 'float32'")


@pytest.mark.parametrize(
    "option, value, code, reason",
    [
        ("--aug-scale", "0.5", 2, "expected two numbers"),
        ("--aug-scale", "1,0.5", 2, "expected two numbers"),
        ("--aug-scale", "a,b", 2, "expected comma-separated numbers"),
        ("--aug-views", "-1", 2, "--aug-views"),
        ("--dtype", "float64", 1, "--dtype float64 is not supported"),
        ("--train", "most", 1, "--train most is not supported"),
    ],
)
def test_bad_option_values(option, value, code, reason, cli, coop_root, tiny_args):
    got, _, err = _extract(cli, coop_root, tiny_args, option, value)
    assert got == code, err
    assert reason in err and "Traceback" not in err
    if code == 1:
        _user_error(got, err)


def test_no_dataset_is_a_usage_error(cli, tiny_args):
    code, _, err = cli("extract", *tiny_args)
    assert code == 2 and "--dataset" in err


def test_offline_tag_with_nothing_cached_fails_fast(cli, coop_root, tmp_path, monkeypatch):
    """`RN50 --pretrained openai` with HF_HUB_OFFLINE=1 (conftest) and an empty Hugging Face
    cache: the ModelLoadError hint, fast (download retries alone would take ~47 s)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.monotonic()
    code, _, err = cli(
        "extract", "-d", "eurosat", "--root", coop_root, "-m", "RN50", "-p", "openai", "--cache-dir", tmp_path / "cache"
    )
    assert time.monotonic() - start < 30
    _user_error(code, err, "cannot get the 'openai' weights of RN50-quickgelu", "offline", "--pretrained /path/to/file")


def test_messages_are_printed_verbatim(cli, tiny_args, tmp_path):
    root = tmp_path / "data[v2]"
    root.mkdir()
    code, _, err = _extract(cli, root, tiny_args)
    _user_error(code, err, f"{root}/eurosat")
