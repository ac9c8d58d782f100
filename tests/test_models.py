"""cacheclip.models: resolving names and weights, loading, encoding (tiny configs, CPU)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cacheclip.errors import ModelLoadError, UnknownNameError
from cacheclip.features.models import encode_images, encode_text, load_model, resolve_model, sha256_file


def test_config_and_checkpoint_route(tiny_clip, tiny_loaded):
    config, ckpt = tiny_clip
    ref = tiny_loaded.ref
    assert ref.name == config.stem
    assert ref.pretrained == "file" and ref.checkpoint_path == str(ckpt.resolve())
    assert ref.weights_sha256 == sha256_file(ckpt)
    assert tiny_loaded.weights_id == f"file-{sha256_file(ckpt)[:12]}"
    assert tiny_loaded.model_id == f"{config.stem}-{sha256_file(config)[:8]}"
    assert tiny_loaded.embed_dim == 32
    assert tiny_loaded.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert tiny_loaded.preprocess["size"] in (32, [32, 32])
    assert not tiny_loaded.model.training
    assert not any(p.requires_grad for p in tiny_loaded.model.parameters())
    identity = tiny_loaded.identity()
    assert identity["weights_sha256"] == ref.weights_sha256 and identity["model_config_sha256"]
    assert tiny_loaded.warnings == []


@pytest.mark.parametrize("which", ["tiny_clip", "tiny_clip_rn"])
def test_weights_come_from_the_checkpoint(which, request):
    config, ckpt = request.getfixturevalue(which)
    loaded = load_model(str(config), str(ckpt))
    saved = torch.load(ckpt, map_location="cpu")
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("which", ["tiny_clip", "tiny_clip_rn"])
def test_encode_images_is_the_model_forward(which, request):
    config, ckpt = request.getfixturevalue(which)
    loaded = load_model(str(config), str(ckpt))
    net = open_clip.create_model(config.stem, pretrained=str(ckpt)).eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = encode_images(loaded, x)
    assert out.shape == (5, 32) and out.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(out, net.encode_image(x))


def test_encode_text_shapes_and_ensemble(tiny_loaded):
    prompts = [
        [f"a photo of a {c}." for c in ("cat", "dog", "owl")],
        [f"art of the {c}." for c in ("cat", "dog", "owl")],
    ]
    raw, ensemble = encode_text(tiny_loaded, prompts, batch_size=2)  # batching must not matter
    assert raw.shape == (2, 3, 32) and ensemble.shape == (3, 32)
    tok = open_clip.get_tokenizer(tiny_loaded.name)
    with torch.no_grad():
        direct = torch.stack([tiny_loaded.model.encode_text(tok(p)) for p in prompts])
    torch.testing.assert_close(raw, direct, rtol=1e-5, atol=1e-6)
    expected = F.normalize(F.normalize(direct, dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(ensemble, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ensemble.norm(dim=-1), torch.ones(3))


def test_random_weights_are_reproducible_and_flagged(tiny_clip):
    a = load_model(str(tiny_clip[0]), "none")
    b = load_model(str(tiny_clip[0]), "none")
    assert a.weights_id == "random-init" and "RANDOM" in a.warnings[0]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(encode_images(a, x), encode_images(b, x))


def test_openai_tag_resolves_to_quickgelu_without_download():
    ref = resolve_model("RN50", "openai")
    assert ref.name == "RN50-quickgelu" and ref.quick_gelu and ref.weights_id == "openai"


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as e:
        resolve_model("RN5O", "openai")
    assert "unknown model 'RN5O'" in e.value.message
    assert "RN50" in e.value.hint and "cacheclip models" in e.value.hint


def test_pretrained_neither_tag_nor_file():
    with pytest.raises(UnknownNameError) as e:
        resolve_model("RN50", "opneai")
    assert "neither a tag of RN50 nor an existing file" in e.value.message
    assert "openai" in e.value.hint


def test_bad_config_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model(str(tmp_path / "nope.json"), "none")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read model config"):
        resolve_model(str(broken), "none")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ModelLoadError, match="lacks vision_cfg, text_cfg"):
        resolve_model(str(partial), "none")


def test_checkpoint_of_another_model_is_a_load_error(tiny_clip, tiny_clip_rn):
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tiny_clip[0]), str(tiny_clip_rn[1]))
    assert "cannot load checkpoint" in e.value.message and str(tiny_clip_rn[1]) in e.value.message


def test_offline_tag_with_nothing_cached_fails_fast(tmp_path):
    # HF_HUB_OFFLINE=1 (conftest); an empty weights dir guarantees nothing is cached
    with pytest.raises(ModelLoadError) as e:
        load_model("RN50", "openai", weights_dir=str(tmp_path / "empty"))
    assert "cannot get the 'openai' weights of RN50-quickgelu" in e.value.message
    assert "--pretrained /path/to/file" in e.value.hint


def test_device_resolution_names_the_fix(monkeypatch):
    import torch

    from cacheclip.errors import ConfigError
    from cacheclip.features.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device") as err:
        resolve_device("cuda:1")
    assert "--device cpu" in err.value.hint
    with pytest.raises(ConfigError, match="unknown --device"):
        resolve_device("tpu")
