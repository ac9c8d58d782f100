"""The contract every registered method keeps (``cacheclip.testing.MethodContract``, the same tests a
plugin's suite runs), for each built-in method with its default settings (training lengths capped)."""

from __future__ import annotations

import pytest

from cacheclip.fit.methods import builtin_methods, get_method, list_methods
from cacheclip.settings import settings_of
from cacheclip.testing import MethodContract


class TestBuiltinContract(MethodContract):
    @pytest.fixture(params=builtin_methods())
    def method(self, request) -> str:
        return request.param


def test_builtin_methods_are_registered():
    assert {"zero-shot", "clip-adapter", "linear-probe", "tip-adapter", "tip-adapter-f"} <= set(builtin_methods())


def test_a_flag_means_one_setting():
    owners: dict[str, set[str]] = {}
    for method in list_methods():
        for name, (_, spec, _) in settings_of(get_method(method).config).items():
            owners.setdefault(spec.flag, set()).add(name)
    shared = {flag: names for flag, names in owners.items() if len(names) > 1}
    assert not shared, f"one flag, several settings: {shared}"
