"""Pre-trained timm weights when the Hugging Face Hub cannot be reached.

Offline, ``huggingface_hub`` retries each request for about a minute before it gives up. Before a
hub download, one direct connection attempt (3 s) tells whether the hub is reachable; when it is
not, the weights come from the local Hugging Face cache, or the run stops at once with the reason.
The only network code of the package; it runs only for ``pretrained: true``.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)

HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repository
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or ``None`` when it can, or when offline mode or a proxy
    decides instead (huggingface_hub then handles it)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_VARS):  # the hub client's own setting
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {host}:{port}: {e.strerror or e}"


def cached_hub_file(hub_id: str, filename: str | None = None) -> str | None:
    """The weight file of ``hub_id`` (``filename``, else timm's usual names) in the local Hugging
    Face cache, if there is one."""
    from huggingface_hub import try_to_load_from_cache

    for name in (filename,) if filename else HUB_FILES:
        path = try_to_load_from_cache(hub_id, name)
        if isinstance(path, str):
            return path
    return None


def offline_pretrained_overlay(name: str, key: str) -> dict[str, str]:
    """``pretrained_cfg_overlay`` for ``timm.create_model``: empty when the hub is reachable (or
    the model's weights do not come from it), the cached file when it is not. Raises
    :class:`~fopro_edge.errors.ConfigError` when the hub is unreachable and nothing is cached."""
    from timm.models import get_pretrained_cfg

    from fopro_edge.errors import ConfigError

    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return {}
    reason = hub_unreachable()
    if reason is None:
        return {}
    cached = cached_hub_file(hub_id, getattr(cfg, "hf_hub_filename", None))
    section = key.rsplit(".", 1)[0]
    if cached is None:
        raise ConfigError(
            f"{key}: the Hugging Face Hub is unreachable ({reason}) and the weights of '{name}' ({hub_id}) are not "
            f"in its local cache; without internet set {section}.pretrained=false and {section}.weights=<local file>"
        )
    log.info("%s: the Hugging Face Hub is unreachable (%s); using the cached %s", key, reason, cached)
    return {"file": cached}
