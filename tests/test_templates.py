"""Template sets, template files and prompt formatting."""

from __future__ import annotations

from importlib import resources

import pytest

from cacheclip.datasets.catalog import COOP11
from cacheclip.datasets.templates import DATASET_TEMPLATES, IMAGENET7, format_prompts, get_templates, list_template_sets
from cacheclip.errors import ConfigError, UnknownNameError


def test_sets_listed():
    assert {"default", "imagenet7", "imagenet80"} <= set(list_template_sets())


@pytest.mark.parametrize("name", COOP11)
def test_default_template_per_dataset(name):
    assert get_templates("default", name) == (DATASET_TEMPLATES[name],)


def test_default_templates_match_coop():
    assert get_templates("default", "EuroSAT") == ("a centered satellite photo of {}.",)
    assert get_templates("default", "DTD") == ("{} texture.",)
    assert get_templates("default", "ucf101") == ("a photo of a person doing {}.",)
    assert get_templates("default", "food-101") == ("a photo of {}, a type of food.",)
    assert get_templates("default", "imagefolder:/data/x") == ("a photo of a {}.",)
    assert get_templates("default", "imagefolder-x") == ("a photo of a {}.",)


def test_imagenet_ensembles():
    assert get_templates("imagenet7", "dtd") == IMAGENET7 and len(IMAGENET7) == 7
    t80 = get_templates("imagenet80", "imagenet")
    assert len(t80) == len(set(t80)) == 80 and all("{}" in t for t in t80)
    assert "itap of a {}." in t80
    assert resources.files("cacheclip.datasets").joinpath("data/imagenet_templates_80.txt").is_file()


def test_template_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\n\n  a photo of my {}.  \nart of {}\n")
    assert get_templates(str(path), "eurosat") == ("a photo of my {}.", "art of {}")
    path.write_text("a photo of {}.\nno slot here\n")
    with pytest.raises(ConfigError) as err:
        get_templates(str(path), "eurosat")
    assert "line 2" in err.value.message and "{}" in err.value.hint
    path.write_text("two {} slots {}\n")
    with pytest.raises(ConfigError):
        get_templates(str(path), "eurosat")
    path.write_text("# only a comment\n")
    with pytest.raises(ConfigError):
        get_templates(str(path), "eurosat")


def test_unknown_set():
    with pytest.raises(UnknownNameError) as err:
        get_templates("imagenet9", "dtd")
    assert "imagenet9" in err.value.message and "imagenet80" in err.value.message
    assert "file" in err.value.hint


def test_format_prompts():
    prompts = format_prompts(["a photo of a {}.", "{} texture."], ["red_fox", "Annual Crop Land", "x"])
    assert prompts == [
        ["a photo of a red fox.", "a photo of a Annual Crop Land.", "a photo of a x."],
        ["red fox texture.", "Annual Crop Land texture.", "x texture."],
    ]
