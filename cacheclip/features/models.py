"""Loading open_clip models and encoding text. The only module that imports open_clip.

A model is named by ``--model`` (an open_clip model name or a path to a model
config JSON) and ``--pretrained`` (an open_clip tag, a local checkpoint file,
or ``none`` for random weights). ``load_model`` resolves both into a
``LoadedModel`` whose ``identity`` is what the feature store records and checks.
"""

from __future__ import annotations

import difflib
import functools
import gc
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cacheclip.common import DEFAULT_MODEL, DEFAULT_PRETRAINED, atomic_path, write_atomic
from cacheclip.errors import ConfigError, ModelLoadError, UnknownNameError

RANDOM_WEIGHTS = "none"
RANDOM_INIT_SEED = 0  # random-weight models are seeded so their features are reproducible


@dataclass(frozen=True)
class ModelRef:
    """A resolved (model, weights) pair: enough to name its store without building it."""

    name: str  # resolved open_clip name, e.g. "RN50-quickgelu"
    pretrained: str  # the tag, "none", or "file"
    checkpoint_path: str | None  # local file the weights come from (--pretrained PATH)
    weights_sha256: str | None  # of that file
    config_sha256: str | None  # of the model-config JSON (--model PATH.json)
    quick_gelu: bool
    config_path: str | None = None  # that JSON file, so a run can rebuild the model later

    @property
    def weights_id(self) -> str:
        """Short, path-safe name of the weights: the tag, ``random-init``, or ``file-<sha12>``."""
        if self.pretrained == RANDOM_WEIGHTS:
            return "random-init"
        if self.weights_sha256:
            return f"file-{self.weights_sha256[:12]}"
        return self.pretrained

    @property
    def model_id(self) -> str:
        """Path-safe model name; a config file adds its hash so two files named alike differ."""
        if self.config_sha256:
            return f"{self.name}-{self.config_sha256[:8]}"
        return self.name

    def identity(self) -> dict[str, Any]:
        """What the store records of the model, known without building it (no preprocessing)."""
        return {
            "model": self.name,
            "model_config_sha256": self.config_sha256 or "",
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256 or "",
            "quick_gelu": self.quick_gelu,
        }


@dataclass
class LoadedModel:
    """A frozen open_clip model ready to encode, with everything that identifies it."""

    ref: ModelRef
    model: torch.nn.Module
    preprocess: dict[str, Any]  # size, mean, std, interpolation, resize_mode
    val_transform: Callable
    tokenizer: Callable
    logit_scale: float
    embed_dim: int
    device: str
    warnings: list[str] = field(default_factory=list)

    name = property(lambda self: self.ref.name)
    model_id = property(lambda self: self.ref.model_id)
    weights_id = property(lambda self: self.ref.weights_id)
    checkpoint_path = property(lambda self: self.ref.checkpoint_path)

    @functools.cached_property
    def state_sha256(self) -> str:
        """SHA-256 over every parameter and buffer (name, dtype, shape, bytes): identifies the
        weights actually loaded, whatever their source (a tag, a file, or random init)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            values = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}:{values.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")
        return digest.hexdigest()

    def identity(self) -> dict[str, Any]:
        """Everything about the model that changes the bytes of its features."""
        return {**self.ref.identity(), "preprocess": json.dumps(self.preprocess, sort_keys=True)}


def resolve_device(device: str | None) -> str:
    """None or "auto": CUDA when available, else CPU. A CUDA device that is not there is an error."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device}, but torch sees no CUDA device",
            "use --device cpu, or install a CUDA build of torch on a machine with a GPU",
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown --device {device}", "use cpu, cuda or cuda:N")
    return device


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def list_models() -> list[str]:
    import open_clip

    return open_clip.list_models()


def _register_config_file(path: Path) -> tuple[str, str]:
    """Register a model-config JSON with open_clip; return (name, sha256)."""
    import open_clip

    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read model config {path}: {e}", "pass a valid open_clip model-config JSON") from e
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ModelLoadError(
            f"model config {path} lacks {', '.join(missing)}", "see open_clip's model_configs/*.json for the format"
        )
    open_clip.add_model_config(path)
    return path.stem, sha256_file(path)


def _resolve_name(model: str) -> tuple[str, str | None, str | None]:
    if model.endswith(".json") or os.path.sep in model:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelLoadError(
                f"model config file not found: {path}",
                "pass an open_clip model name (cacheclip models) or an existing JSON file",
            )
        return (*_register_config_file(path), str(path.resolve()))
    names = list_models()
    if model not in names:
        close = difflib.get_close_matches(model, names, n=5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownNameError(
            f"unknown model '{model}'",
            hint + "run `cacheclip models` for the open_clip names, or pass a model-config JSON path",
        )
    return model, None, None


def _config_quick_gelu(name: str) -> bool:
    """Whether the model config itself asks for QuickGELU (the `-quickgelu` configs do)."""
    import open_clip

    return bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))


def _quickgelu_name(name: str, tag_cfg: dict) -> tuple[str, bool]:
    """OpenAI-style tags need QuickGELU; open_clip >= 2.29 only warns. Prefer the
    explicit `-quickgelu` config so the store path says which activation ran."""
    if not tag_cfg.get("quick_gelu", False) or _config_quick_gelu(name):
        return name, _config_quick_gelu(name)
    if f"{name}-quickgelu" in list_models():
        return f"{name}-quickgelu", True
    return name, True  # no such config: force it at creation


def _offline_hint(name: str, tag: str) -> str:
    return (
        f'on a machine with network run `python -c "import open_clip; '
        f"open_clip.create_model('{name}', pretrained='{tag}')\"` and copy its Hugging Face cache "
        f"(~/.cache/huggingface) here, or download the checkpoint file and pass --pretrained /path/to/file"
    )


HUB_CHECK_SECONDS = 3.0  # how long to wait for the weights' server before saying it cannot be reached


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _weights_cached(tag_cfg: dict, cache_dir: str | None) -> bool:
    """Whether open_clip finds the weights of a pretrained tag without the network: in the Hugging
    Face cache (hub weights) or the URL download folder (``~/.cache/clip``)."""
    from open_clip import pretrained as op

    hub, url = tag_cfg.get("hf_hub", ""), tag_cfg.get("url", "")
    if "file" in tag_cfg:
        return True
    if hub and op.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or op.HF_WEIGHTS_NAME
        names = {filename, op.HF_SAFE_WEIGHTS_NAME, str(Path(filename).with_suffix(".safetensors"))}
        return any(isinstance(try_to_load_from_cache(repo, n, cache_dir=cache_dir), str) for n in names)
    if url:
        folder = Path(cache_dir).expanduser() if cache_dir else Path("~/.cache/clip").expanduser()
        return (folder / os.path.basename(url)).is_file()
    return False


def _weights_server(tag_cfg: dict) -> str:
    """The URL open_clip would download a tag's weights from (the hub's endpoint, or the URL)."""
    from open_clip import pretrained as op

    if tag_cfg.get("hf_hub") and op.has_hf_hub():
        from huggingface_hub import constants

        return constants.ENDPOINT
    return tag_cfg.get("url", "")


def _unreachable(url: str, seconds: float) -> str:
    """Why ``url``'s server does not answer an HTTP HEAD within ``seconds`` ("" when it answers, with
    any status), through the proxies of the environment; the request runs in a thread that is left
    behind when it takes longer (name lookups have no timeout of their own)."""
    import threading
    import urllib.error
    import urllib.request

    answer: list[str] = []

    def attempt() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds).close()
            answer.append("")
        except urllib.error.HTTPError:  # the server answered
            answer.append("")
        except Exception as e:  # URLError, timeouts, refused or reset connections, bad URLs
            answer.append(re.sub(r"\s+", " ", str(getattr(e, "reason", e) or type(e).__name__)))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    return answer[0] if answer else f"no answer in {seconds:g} s"


def _check_weights_reachable(name: str, tag: str, cache_dir: str | None) -> None:
    """Fail at once, with the usual hint, when a tag's weights are not cached and cannot be fetched
    (offline mode, or the server does not answer within ``HUB_CHECK_SECONDS``), instead of
    spending the download's retries (about a minute) to say the same."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    if not tag_cfg or _weights_cached(tag_cfg, cache_dir):
        return
    server = _weights_server(tag_cfg)
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        why = "HF_HUB_OFFLINE is set"
    else:
        problem = _unreachable(server, HUB_CHECK_SECONDS) if server else ""
        if not problem:
            return
        why = f"{server} cannot be reached ({problem})"
    raise ModelLoadError(
        f"cannot get the '{tag}' weights of {name} (offline, or not downloaded yet): they are not cached "
        f"here and {why}",
        _offline_hint(name, tag),
    )


def _create(name: str, pretrained: str | None, force_quick_gelu: bool, device: str, cache_dir: str | None):
    import open_clip

    if pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return open_clip.create_model_and_transforms(
                name, pretrained=None, force_quick_gelu=force_quick_gelu, device=device
            )
    return open_clip.create_model_and_transforms(
        name, pretrained=pretrained, force_quick_gelu=force_quick_gelu, device=device, cache_dir=cache_dir
    )


def resolve_model(model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED) -> ModelRef:
    """Resolve --model / --pretrained to a ModelRef (hashes files; downloads nothing)."""
    import open_clip

    name, config_sha, config_path = _resolve_name(model)
    if pretrained.lower() == RANDOM_WEIGHTS:
        return ModelRef(name, RANDOM_WEIGHTS, None, None, config_sha, _config_quick_gelu(name), config_path)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        name, quick_gelu = _quickgelu_name(name, tag_cfg)
        return ModelRef(name, pretrained, None, None, config_sha, quick_gelu, config_path)
    path = Path(pretrained).expanduser()
    if path.is_file():
        return ModelRef(
            name, "file", str(path.resolve()), sha256_file(path), config_sha, _config_quick_gelu(name), config_path
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise UnknownNameError(
        f"--pretrained '{pretrained}' is neither a tag of {name} nor an existing file",
        f"tags for {name}: {', '.join(tags) or '(none)'}; or a checkpoint file path; or 'none'",
    )


def load_model(
    model: str = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED,
    *,
    device: str = "cpu",
    weights_dir: str | None = None,
) -> LoadedModel:
    """Build a frozen open_clip model in eval mode from a name/config and a tag/file/none."""
    import open_clip

    ref = resolve_model(model, pretrained)
    warnings: list[str] = []
    if ref.pretrained == RANDOM_WEIGHTS:
        warnings.append(
            f"--pretrained none: {ref.name} has RANDOM weights; its features and "
            "accuracies mean nothing (use it for tests and smoke runs only)"
        )
    source = None if ref.pretrained == RANDOM_WEIGHTS else (ref.checkpoint_path or ref.pretrained)
    force = ref.quick_gelu and not _config_quick_gelu(ref.name)
    if source is not None and ref.checkpoint_path is None:  # a tag: downloaded unless cached
        _check_weights_reachable(ref.name, ref.pretrained, weights_dir)
    try:
        net, _, val_transform = _create(ref.name, source, force, device, weights_dir)
    except Exception as e:  # open_clip raises RuntimeError/OSError/HF errors alike
        raise _load_error(ref.name, ref.pretrained, ref.checkpoint_path, e) from e
    net.eval().requires_grad_(False)
    loaded = LoadedModel(
        ref=ref,
        model=net,
        preprocess=_preprocess_cfg(net),
        val_transform=val_transform,
        tokenizer=open_clip.get_tokenizer(ref.name),
        logit_scale=float(net.logit_scale.exp().item()),
        embed_dim=_embed_dim(net),
        device=device,
        warnings=warnings,
    )
    return loaded


def _load_error(name: str, pretrained: str, checkpoint: str | None, e: Exception) -> ModelLoadError:
    cause = re.sub(r"\s+", " ", str(e))
    if checkpoint and len(cause) < 8:  # torch's unpickler says only the bad byte, e.g. "105"
        cause = f"not a PyTorch or safetensors checkpoint ({type(e).__name__}: {cause})"
    cause = cause if len(cause) <= 400 else cause[:400].rsplit(" ", 1)[0] + " ..."
    if checkpoint:
        return ModelLoadError(
            f"cannot load checkpoint {checkpoint} into {name}: {cause}",
            "check that the file holds weights for this --model (a -quickgelu name for OpenAI weights)",
        )
    return ModelLoadError(
        f"cannot get the '{pretrained}' weights of {name} (offline, or not downloaded yet): {cause}",
        _offline_hint(name, pretrained),
    )


def _preprocess_cfg(net: torch.nn.Module) -> dict[str, Any]:
    from open_clip import get_model_preprocess_cfg

    cfg = dict(get_model_preprocess_cfg(net))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(cfg.items())}


def _embed_dim(net: torch.nn.Module) -> int:
    return (
        int(net.text_projection.shape[1])
        if getattr(net, "text_projection", None) is not None
        else int(net.visual.output_dim)
    )


@torch.no_grad()
def encode_images(loaded: LoadedModel, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """(B, 3, H, W) -> raw (un-normalised) image features (B, D), float32.

    precision: fp32, amp-fp16 (CUDA autocast) or amp-bf16 (CPU autocast). Under autocast the
    model and input go channels_last (the fast layout for conv nets; a no-op for the math).
    """
    images = images.to(loaded.device, non_blocking=True)
    if precision == "fp32":
        return loaded.model.encode_image(images).float()
    _to_channels_last(loaded.model)
    images = images.to(memory_format=torch.channels_last)
    device_type, dtype = ("cuda", torch.float16) if precision == "amp-fp16" else ("cpu", torch.bfloat16)
    with torch.autocast(device_type=device_type, dtype=dtype):
        return loaded.model.encode_image(images).float()


def _to_channels_last(model: torch.nn.Module) -> None:
    """Once per model: its 4-D weights (conv nets') to channels_last."""
    conv = next((p for p in model.parameters() if p.dim() == 4), None)
    if conv is not None and not conv.is_contiguous(memory_format=torch.channels_last):
        model.to(memory_format=torch.channels_last)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without, torch emulates
    it and a bf16 matmul runs ~40x slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


@torch.no_grad()
def encode_text(
    loaded: LoadedModel, prompts: Sequence[Sequence[str]], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prompts[t][k]`` -> (per-template raw embeddings (T, K, D), their ``prompt_ensemble`` (K, D))."""
    per_template = []
    for template_prompts in prompts:
        chunks = []
        for start in range(0, len(template_prompts), batch_size):
            tokens = loaded.tokenizer(list(template_prompts[start : start + batch_size])).to(loaded.device)
            chunks.append(loaded.model.encode_text(tokens).float().cpu())
        per_template.append(torch.cat(chunks))
    raw = torch.stack(per_template)  # (T, K, D)
    return raw, prompt_ensemble(raw)


def prompt_ensemble(raw: torch.Tensor) -> torch.Tensor:
    """CLIP's prompt ensembling of raw text embeddings (T, K, D) -> (K, D): normalise each
    template's embedding, average over templates, normalise again."""
    return F.normalize(F.normalize(raw.float(), dim=-1).mean(0), dim=-1)


def write_random_model(folder: Path, name: str, config: dict[str, Any], seed: int) -> tuple[Path, Path]:
    """Write ``<name>.json`` (an open_clip model config) and ``<name>.pt`` (random weights drawn
    with ``seed``) into ``folder``, for tests, smoke runs and the demo; existing files are
    kept. Returns (config path, checkpoint path), loadable with ``load_model``."""
    import open_clip

    config_path, checkpoint = Path(folder) / f"{name}.json", Path(folder) / f"{name}.pt"
    if config_path.is_file() and checkpoint.is_file():
        return config_path, checkpoint
    write_atomic(config_path, json.dumps(config, indent=2) + "\n")
    open_clip.add_model_config(config_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
    with atomic_path(checkpoint) as tmp, open(tmp, "wb") as handle:
        torch.save(model.state_dict(), handle)  # a file object: the bytes do not depend on the temp name
    return config_path, checkpoint


def settle_process(device: str) -> None:
    """Process-wide settings for a run that encodes with a loaded model; called once by whoever
    sets the process up (the CLI's commands, a batch), after loading, never by ``load_model``.

    * On CUDA, fp32 means fp32: cuDNN would run convolutions in TF32 (10-bit mantissa) on
      Ampere and later by default (``--precision amp`` autocasts explicitly instead).
    * ``gc.freeze()``: the ~400k objects of torch and open_clip that exist by now would be
      rescanned by every full garbage collection (0.17 s each here, about every 5 parses of an
      8000-item split file); frozen, they are still freed by reference counting.
    """
    if device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    gc.freeze()
