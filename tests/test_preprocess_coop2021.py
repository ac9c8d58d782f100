"""`extract --preprocess coop-2021`: CoOp/Dassl's transforms before 9 Oct 2021, checked against
an independent PIL + numpy computation, and recorded in the store identity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cacheclip.datasets.layouts import load_dataset
from cacheclip.features import store as st
from cacheclip.features.preprocess import Coop2021Test, Coop2021Views, draw, split_protocol, with_protocol
from cacheclip.fit.predict import FittedRun

CLIP = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
BICUBIC, BILINEAR = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR


def odd_images(seed: int = 5) -> list[Image.Image]:
    """Noise images of odd aspect ratios (wide, tall, nearly square, tiny), fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    sizes = [(301, 97), (61, 250), (500, 333), (19, 23)]  # (width, height)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes]


# ---------------------------------------------------------------- the reference, written out from the protocol


def normalise(rgb: np.ndarray, pre: dict) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 with the model's mean and std."""
    x = rgb.astype(np.float32) / 255.0
    return ((x - np.float32(pre["mean"])) / np.float32(pre["std"])).transpose(2, 0, 1)


def enlarge_and_centre_crop(image: Image.Image, s: int) -> np.ndarray:
    big = int(s * 1.125)  # Dassl: int(224 x 1.125) = 252, bicubic
    a = np.asarray(image.resize((big, big), BICUBIC))
    off = int(round((big - s) / 2))
    return a[off : off + s, off : off + s]


def reference_test(image: Image.Image, pre: dict) -> np.ndarray:
    s = pre["size"]
    return normalise(enlarge_and_centre_crop(image.resize((s, s), BICUBIC), s), pre)


def reference_view(image: Image.Image, pre: dict, flip: bool, translate: bool, top: int, left: int) -> np.ndarray:
    s = pre["size"]
    a = np.asarray(image.resize((s, s), BICUBIC))
    if flip:
        a = a[:, ::-1]
    t = round(s * 1.125)  # Random2DTranslation: round(224 x 1.125) = 252, always bilinear
    if translate:
        a = np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((t, t), BILINEAR))[
            top : top + s, left : left + s
        ]
    return normalise(enlarge_and_centre_crop(Image.fromarray(np.ascontiguousarray(a)), s), pre)


# ---------------------------------------------------------------- the transforms


@pytest.mark.parametrize("pre", [CLIP, {**CLIP, "size": 32}], ids=["224", "tiny-32"])
def test_test_transform_equals_the_reference(pre):
    for image in odd_images():
        got = Coop2021Test(pre)(image).numpy()
        assert got.shape == (3, pre["size"], pre["size"])
        np.testing.assert_allclose(got, reference_test(image, pre), atol=1e-5)


def test_test_transform_squashes_instead_of_cropping():
    """A 6:1 strip red | green | blue keeps all three colours (a shorter-side crop would keep green)."""
    strip = np.zeros((50, 300, 3), np.uint8)
    strip[:, :100, 0] = strip[:, 100:200, 1] = strip[:, 200:, 2] = 255
    x = Coop2021Test(CLIP)(Image.fromarray(strip)).numpy()  # (3, 224, 224)
    assert [int(x[:, 112, c].argmax()) for c in (10, 112, 214)] == [0, 1, 2]


def test_train_views_equal_the_reference():
    pre, views = CLIP, 12
    maker = Coop2021Views(views, 3, pre)
    seen = set()
    for n, image in enumerate(odd_images()):
        path = f"class_{n}/img {n}.jpg"
        got = maker(image, path).numpy()
        assert got.shape == (views, 3, 224, 224)
        for v in range(views):
            d = draw(3, path, v, (28, 28))
            seen.add((d.flip, d.translate))
            np.testing.assert_allclose(
                got[v], reference_view(image, pre, d.flip, d.translate, d.top, d.left), atol=1e-5
            )
    assert seen == {(False, False), (False, True), (True, False), (True, True)}  # every branch was checked


def test_draws_follow_dassl():
    """flip and translate each with p 0.5, offsets round(uniform(0, 28)) on both axes."""
    draws = [draw(0, "x.jpg", v, (28, 28)) for v in range(2000)]
    assert 0.45 < np.mean([d.flip for d in draws]) < 0.55
    moved = [d for d in draws if d.translate]
    assert 0.45 < len(moved) / len(draws) < 0.55
    assert all(d.top == d.left == 0 for d in draws if not d.translate)
    tops, lefts = [d.top for d in moved], [d.left for d in moved]
    assert min(tops) == min(lefts) == 0 and max(tops) == max(lefts) == 28
    # round() of a uniform: the end values get half the mass of the inner ones
    assert np.mean(np.array(tops) == 0) < 0.6 * np.mean(np.array(tops) == 14)


def test_views_depend_only_on_seed_path_and_view():
    image = odd_images()[0]
    four = Coop2021Views(4, 7, CLIP)(image, "a/b.jpg")
    assert torch.equal(four[:2], Coop2021Views(2, 7, CLIP)(image, "a/b.jpg"))
    assert torch.equal(four, Coop2021Views(4, 7, CLIP)(image, "a/b.jpg"))
    assert not torch.equal(four, Coop2021Views(4, 8, CLIP)(image, "a/b.jpg"))
    assert not torch.equal(four, Coop2021Views(4, 7, CLIP)(image, "a/c.jpg"))


def test_protocol_rides_in_the_preprocess_identity():
    model_cfg = json.dumps({"size": 224, "mean": [0.5], "std": [0.25], "interpolation": "bicubic"}, sort_keys=True)
    assert with_protocol(model_cfg, "default") == model_cfg  # stores written before stay valid
    tagged = with_protocol(model_cfg, "coop-2021")
    assert tagged != model_cfg and split_protocol(tagged) == ("coop-2021", model_cfg)
    assert split_protocol(model_cfg) == ("default", model_cfg)
    assert FittedRun(None, "m", [], None, {"preprocess": tagged}).protocol == "coop-2021"  # type: ignore[arg-type]


# ---------------------------------------------------------------- end to end


def _extract(cli, coop_root, tiny_clip, cache, *extra):
    return cli(
        "extract", "-d", "eurosat", "--root", coop_root, "-m", tiny_clip[0], "-p", tiny_clip[1],
        "--cache-dir", cache, "--workers", 0, "--aug-views", 2, "--shots", 1, "--seeds", 1,
        "--dtype", "float32", *extra,
    )  # fmt: skip


def test_extract_records_coop2021_and_refuses_the_mix(cli, coop_root, tiny_clip, tiny_loaded, tmp_path):
    cache = tmp_path / "cache"
    code, out, err = _extract(cli, coop_root, tiny_clip, cache, "--preprocess", "coop-2021")
    assert code == 0, err
    [path] = cache.rglob("eurosat*.h5")
    with st.open_store(path) as s:
        attrs = dict(s.attrs)
        test_feats, _, _ = s.read("test", [0, 5])
        train_idx = s.encoded("train")[:2]
        _, _, train_aug = s.read("train", train_idx, aug=True)
    assert attrs["preprocess_protocol"] == "coop-2021"
    assert split_protocol(attrs["preprocess"]) == ("coop-2021", tiny_loaded.identity()["preprocess"])

    # the stored features are the model's encoding of the coop-2021 transforms of the files
    ds = load_dataset("eurosat", coop_root)
    test_tf, views = Coop2021Test(tiny_loaded.preprocess), Coop2021Views(2, 0, tiny_loaded.preprocess)
    with torch.no_grad():
        for row, i in enumerate([0, 5]):
            image = Image.open(ds.image_root / ds.test[i].path).convert("RGB")
            direct = tiny_loaded.model.encode_image(test_tf(image)[None]).numpy()[0]
            np.testing.assert_allclose(test_feats[row], direct, rtol=1e-5, atol=1e-6)
        for row, i in enumerate(train_idx):
            image = Image.open(ds.image_root / ds.train[i].path).convert("RGB")
            direct = tiny_loaded.model.encode_image(views(image, ds.train[i].path)).numpy()
            np.testing.assert_allclose(train_aug[row], direct, rtol=1e-5, atol=1e-6)

    # the same store with the other protocol: refused, naming the difference
    code, out, err = _extract(cli, coop_root, tiny_clip, cache)
    assert code == 1 and "preprocess" in err and "coop-2021" in err and "unexpected" not in err, err
    code, _, err = _extract(cli, coop_root, tiny_clip, cache, "--preprocess", "coop-2021")
    assert code == 0 and "Traceback" not in err, err


def test_bad_preprocess_values_are_user_errors(cli, coop_root, tiny_clip, tmp_path):
    code, _, err = _extract(cli, coop_root, tiny_clip, tmp_path / "c", "--preprocess", "coop-2022")
    assert code == 1 and "--preprocess coop-2022 is not supported" in err and "coop-2021" in err, err
    code, _, err = _extract(
        cli, coop_root, tiny_clip, tmp_path / "c", "--preprocess", "coop-2021", "--aug-scale", "0.5,1"
    )
    assert code == 1 and "--aug-scale does not apply" in err, err
