"""Issue 27, extreme option values: a count no run can reach (``--epochs 99999999999999999999``)
is refused when the option is read, from the command line and from a TOML file alike."""

from __future__ import annotations

import dataclasses
import time
import typing

import pytest
from stores import clustered

from cacheclip.errors import ConfigError
from cacheclip.fit.methods import get_method, list_methods
from cacheclip.settings import INT_LIMIT, build, from_text, setting, settings_of


def test_fit_refuses_an_epoch_count_beyond_any_run_at_once(tmp_path, cli, monkeypatch):
    clustered(tmp_path / "cache", "eurosat")  # a store it could fit: only the option stops it
    from cacheclip import api

    def no_fit(*args, **kw):  # without the bound the fit would start (and never end)
        raise AssertionError("the fit started with --epochs 99999999999999999999")

    monkeypatch.setattr(api, "fit_dataset", no_fit)  # the CLI's fit runs through cacheclip.api
    start = time.perf_counter()
    code, _, err = cli(
        "fit", "-d", "eurosat", "--method", "clip-adapter", "--epochs", "99999999999999999999",
        "--model", "RN50", "--pretrained", "none", "--shots", "1", "--seeds", "1",
        "--cache-dir", tmp_path / "cache", "--results-dir", tmp_path / "r",
    )  # fmt: skip
    assert code == 2 and "--epochs" in err and "at most 2147483647" in err and "unexpected" not in err
    assert time.perf_counter() - start < 30 and not (tmp_path / "r").exists()


def test_every_integer_setting_of_every_method_refuses_a_count_above_the_limit():
    checked = 0
    for method in list_methods():
        config = get_method(method).config
        for key, (_, _, kind) in settings_of(config).items():
            if int not in (kind, *typing.get_args(kind)):
                continue
            with pytest.raises(ConfigError, match=f"'{key}' must be .*integers? of at most"):
                build(config, {key: 10**20}, f"batch.toml [{method}]")
            checked += 1
    assert checked >= 10  # epochs of clip-adapter, tip-adapter-f, lp++, clap, taskres, zs-lp...


def test_every_integer_setting_is_bounded_and_a_setting_can_bound_it_lower():
    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = setting(10, "steps", flag="--steps", most=1000)
        sizes: tuple[int, ...] = setting((1,), "sizes", flag="--sizes", most=64)
        seed: int = setting(0, "seed", flag="--seed")

    assert build(Config, {"steps": 1000, "sizes": [64], "seed": INT_LIMIT}, "t").seed == INT_LIMIT
    for values, words in [
        ({"steps": 1001}, "'steps' must be integer of at most 1000"),
        ({"sizes": [1, 65]}, "'sizes' must be a list of integers of at most 64"),
        ({"seed": INT_LIMIT + 1}, f"'seed' must be integer of at most {INT_LIMIT}"),
        ({"seed": -(10**40)}, "huge"),
    ]:
        with pytest.raises(ConfigError, match=words):
            build(Config, values, "t")
    with pytest.raises(ConfigError, match="of at most"):
        from_text(int, "99999999999999999999", "--seed", "options")


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--aug-views", "99999999999999999999", "'--aug-views' must be integer of at most 1000"),
        ("--aug-views", "5000", "'--aug-views' must be integer of at most 1000"),
        ("--batch-size", "99999999999999999999", "'--batch-size' must be integer of at most 2147483647"),
        ("--shots", "1,99999999999999999999", "'--shots' must be a list of integers of at most 2147483647"),
    ],
)
def test_extract_refuses_a_count_beyond_what_can_run_before_loading_anything(cli, tmp_path, option, value, words):
    code, _, err = cli("extract", "--dataset", "eurosat", "--root", tmp_path, option, value, "--cache-dir", tmp_path)
    assert code == 1 and words in err and "unexpected" not in err, err
