"""Offline, a pretrained tag whose weights are not cached fails within seconds with the usual hint,
instead of spending the download's retries (about a minute) to say the same."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

# Runs in a fresh process: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported.
PROBE = """
import json, sys, time
from cacheclip.errors import ModelLoadError
from cacheclip.features.models import load_model
import huggingface_hub, open_clip  # imported first: the clock times the network wait, not imports
start = time.perf_counter()
try:
    load_model("RN50", "openai", weights_dir=sys.argv[1])
    outcome = {"error": None}
except ModelLoadError as e:
    outcome = {"error": e.message, "hint": e.hint}
outcome["seconds"] = time.perf_counter() - start
print(json.dumps(outcome))
"""


def probe(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base |= {"HF_HOME": str(tmp_path / "hf"), **env}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "weights")], env=base, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(outcome: dict) -> None:
    assert outcome["error"] and "cannot get the 'openai' weights of RN50-quickgelu" in outcome["error"]
    assert "--pretrained /path/to/file" in outcome["hint"]  # the same hint as before
    assert outcome["seconds"] < 10, outcome


def test_a_server_that_never_answers(tmp_path):
    """The hub accepts the connection and says nothing: the check gives up after a few seconds."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        outcome = probe(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}")
    check(outcome)
    assert "cannot be reached" in outcome["error"]


def test_offline_mode(tmp_path):
    outcome = probe(tmp_path, HF_HUB_OFFLINE="1")
    check(outcome)
    assert "HF_HUB_OFFLINE is set" in outcome["error"]
