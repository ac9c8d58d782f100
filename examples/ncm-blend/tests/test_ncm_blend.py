"""The plugin's own tests: cacheclip's method contract in one line, and its numbers against numpy."""

import numpy as np
import pytest

import cacheclip
from cacheclip.testing import clustered, method_contract_tests

TestNcmBlendContract = method_contract_tests("ncm-blend")


def test_it_is_a_method_like_the_built_in_ones():
    assert "ncm-blend" in cacheclip.list_methods()
    assert cacheclip.get_method("ncm-blend").contract == cacheclip.CONTRACT_VERSION


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_test_accuracy_equals_numpy_on_the_exported_features(tmp_path):
    path = clustered(tmp_path / "cache")
    [result] = cacheclip.run_fit(
        "eurosat", "ncm-blend", shots=(4,), seeds=(2,), model="RN50", pretrained="none",  # the generated store's
        cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
    )  # fmt: skip
    beta = result["selection"]["chosen"]["beta"]
    with cacheclip.open_store(path) as store:
        train, test = store.split("train", views=True), store.split("test")
        text = store.text_classifier("single")
        index = {p: i for i, p in enumerate(train.paths)}
        rows = [index[p] for p in result["fewshot"]["train_paths"]]
    seen = np.concatenate([train.features[rows, None], train.views[rows]], 1)  # clean view + augmented views
    items = _unit(seen).mean(1)
    labels = train.labels[rows]
    means = _unit(np.stack([items[labels == k].sum(0) for k in range(len(text))]))
    f = _unit(test.features)
    predicted = (f @ _unit(text).T + beta * f @ means.T).argmax(1)
    assert result["metrics"]["test"]["top1"] == pytest.approx(100 * (predicted == test.labels).mean(), abs=1e-6)
