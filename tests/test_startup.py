"""Start-up: a fit resolves its model names from the cache dir's memo, without importing open_clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cacheclip.features import locate
from cacheclip.features.models import resolve_model

PROBE = """
import sys
from cacheclip.features.locate import resolve_remembered
ref = resolve_remembered(sys.argv[1], sys.argv[2], sys.argv[3])
print(ref.model_id, ref.weights_id, "open_clip" in sys.modules)
"""


def _resolve_in_a_new_process(model: str, pretrained: str, cache: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, model, pretrained, str(cache)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_the_second_resolution_comes_from_the_memo_without_open_clip(tmp_path):
    first = _resolve_in_a_new_process("RN50", "none", tmp_path)
    second = _resolve_in_a_new_process("RN50", "none", tmp_path)
    assert first == [second[0], second[1], "True"]  # the first needed open_clip
    assert second[2] == "False"
    assert json.loads((tmp_path / locate.REFS_FILE).read_text())  # remembered


def test_a_changed_checkpoint_file_is_resolved_again(tmp_path, monkeypatch):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"one")
    calls = []

    def counting(model, pretrained):
        calls.append(pretrained)
        return resolve_model(model, pretrained)

    monkeypatch.setattr(locate, "resolve_model", counting)
    a = locate.resolve_remembered("RN50", str(ckpt), tmp_path)
    assert locate.resolve_remembered("RN50", str(ckpt), tmp_path) == a and len(calls) == 1
    ckpt.write_bytes(b"other weights")
    os.utime(ckpt, ns=(1, 1))
    b = locate.resolve_remembered("RN50", str(ckpt), tmp_path)
    assert len(calls) == 2 and b.weights_sha256 != a.weights_sha256


def test_a_damaged_or_unwritable_memo_only_costs_the_lookup(tmp_path):
    (tmp_path / locate.REFS_FILE).write_text("{not json")
    ref = locate.resolve_remembered("RN50", "none", tmp_path)
    assert ref == resolve_model("RN50", "none")
    assert locate.resolve_remembered("RN50", "none", tmp_path / "missing") == ref  # no cache dir: nothing written
    assert not (tmp_path / "missing").exists()
