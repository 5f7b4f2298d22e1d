"""Teacher-feature cache: the frozen teacher's features of ``K`` fixed views per train image, computed once.

Where the teacher's input cannot change during training (``ekd``, ``ekd+fpg`` and ``ekd+randfpg``
once the prompt is frozen) its features of a given view never change either, so they are computed
once per view (fp16) and the student trains on exactly those views (FKD, ECCV 2022; torchdistill's
``cache_output``). The student's views are stored beside them (uint8) when they fit in
``distill.teacher_cache.max_view_mib``, else rendered again from their seeds.

Entries live in ``<dir>/views-<key>/`` and ``<dir>/features-<key>/``. A view key covers the
images (ids, labels, content), the augmentation, both resolutions, ``K`` and the view seed; a
feature key adds the teacher (architecture, every weight, normalisation, input size) and the
prompt (every parameter). Runs of other seeds and methods with the same keys reuse an entry; an
entry whose recorded key or shapes differ is rebuilt, never used. Under ``torchrun`` each rank
renders and encodes its shard of the images, rank 0 assembles the entry, every rank reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fopro_edge.data.images import ImageList
from fopro_edge.data.views import FixedViews, ViewSpec, to_uint8
from fopro_edge.distill.runtime import Runtime
from fopro_edge.io import atomic_write_json

log = logging.getLogger(__name__)

FORMAT = 1
ENV_DIR = "FOPRO_EDGE_CACHE"


def default_dir() -> Path:
    """``$FOPRO_EDGE_CACHE``, else ``$XDG_CACHE_HOME/fopro-edge`` (``~/.cache/fopro-edge``)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fopro-edge"


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def images_fingerprint(images: ImageList) -> str:
    """Ids, labels and content: array bytes, or each file's size and modification time."""
    h = hashlib.sha256()
    h.update(json.dumps(images.ids()).encode())
    h.update(np.ascontiguousarray(images.labels).tobytes())
    if images.in_memory:
        h.update(np.ascontiguousarray(images.refs).tobytes())
    else:
        for p in images.refs:
            st = os.stat(p)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def module_fingerprint(module: nn.Module | None) -> str:
    """Every parameter and buffer of ``module`` (``"none"`` without one)."""
    if module is None:
        return "none"
    h = hashlib.sha256(type(module).__name__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CachePlan:
    """What one run asks of the cache."""

    root: Path
    images: ImageList
    spec: ViewSpec
    views: int
    view_seed: int
    store_views: bool  # keep the student views (else render them from their seeds)
    teacher: nn.Module | None  # None: views only (a method without a teacher, or a live teacher)
    prompt: nn.Module | None = None
    batch_size: int = 64

    def view_payload(self) -> dict[str, Any]:
        return {"format": FORMAT, "images": images_fingerprint(self.images), "spec": self.spec.to_dict(),
                "views": self.views, "view_seed": self.view_seed}

    def feature_payload(self) -> dict[str, Any]:
        return self.view_payload() | {"teacher": module_fingerprint(self.teacher), "prompt": module_fingerprint(self.prompt)}


@dataclass
class CacheEntry:
    views: torch.Tensor | None  # N×K×3×S×S uint8
    features: torch.Tensor | None  # N×K×D float16
    built: list[str]  # the entries this run built (empty: every entry reused)
    seconds: float
    view_dir: Path | None
    feature_dir: Path | None


def _valid(path: Path, payload: dict[str, Any], shape: tuple[int, ...] | None) -> bool:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != payload:
            return False
        arr = np.load(path / "data.npy", mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return False
    return shape is None or tuple(arr.shape[: len(shape)]) == shape


def ensure(plan: CachePlan, rt: Runtime) -> CacheEntry:
    """The plan's views and features, from the cache or built now (then stored for later runs)."""
    started = time.perf_counter()
    n, k = len(plan.images), plan.views
    wanted: dict[str, tuple[Path, dict[str, Any]]] = {}
    if plan.store_views:
        payload = plan.view_payload()
        wanted["views"] = (plan.root / f"views-{digest(payload)}", payload)
    if plan.teacher is not None:
        payload = plan.feature_payload()
        wanted["features"] = (plan.root / f"features-{digest(payload)}", payload)
    missing = [name for name, (path, payload) in wanted.items() if not _valid(path, payload, (n, k))]
    rt.barrier()  # every rank decided before rank 0 may replace a stale entry
    if missing:
        _build(plan, missing, wanted, rt)
    rt.barrier()
    arrays = {name: torch.from_numpy(np.load(path / "data.npy")) for name, (path, _) in wanted.items()}
    seconds = time.perf_counter() - started
    if missing:
        log.info("teacher cache: built %s in %.1f s (%d images × %d views)", " and ".join(missing), seconds, n, k)
    else:
        log.info("teacher cache: reused %s", ", ".join(str(p) for p, _ in wanted.values()) or "nothing")
    return CacheEntry(arrays.get("views"), arrays.get("features"), missing, seconds,
                      wanted.get("views", (None,))[0], wanted.get("features", (None,))[0])


@torch.no_grad()
def _build(plan: CachePlan, missing: list[str], wanted: dict[str, tuple[Path, dict[str, Any]]], rt: Runtime) -> None:
    n, k = len(plan.images), plan.views
    need_features = "features" in missing
    dataset = FixedViews(plan.images, plan.spec, k, plan.view_seed)
    mine = np.arange(rt.rank, n, rt.world_size)
    student_parts: list[torch.Tensor] = []
    feature_parts: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            x = torch.stack(pending).to(rt.device)
            with rt.autocast():
                f = plan.teacher(plan.prompt(x) if plan.prompt is not None else x)
            feature_parts.append(f.float().to(torch.float16).cpu())
            pending.clear()

    total, every = len(mine) * k, max(1, len(mine) // 10)
    log.info("teacher cache: building %s of %d images × %d views%s", " and ".join(missing), n, k,
             f" (rank {rt.rank}: {len(mine)} images)" if rt.distributed else "")
    started = time.perf_counter()
    for done, i in enumerate(mine):
        if done and done % every == 0:
            rate = done * k / (time.perf_counter() - started)
            log.info("teacher cache: %d/%d views, %.1f views/s, about %.0f s left", done * k, total, rate,
                     (total - done * k) / rate)
        for view in range(k):
            student, teacher = dataset.render_view(int(i), view)
            if "views" in missing:
                student_parts.append(to_uint8(student))
            if need_features:
                pending.append(teacher)
                if len(pending) == plan.batch_size:
                    flush()
    flush()
    # one folder per build (ranks of one torchrun share its id), so two runs building one entry never mix parts
    build_id = os.environ.get("TORCHELASTIC_RUN_ID") or str(os.getpid())
    tmp_root = plan.root / f".building-{digest([wanted[m][1] for m in missing])}-{build_id}"
    parts = {"index": torch.from_numpy(mine)}
    if student_parts:
        parts["views"] = torch.stack(student_parts).view(len(mine), k, *student_parts[0].shape)
    if feature_parts:
        parts["features"] = torch.cat(feature_parts).view(len(mine), k, -1)
    tmp_root.mkdir(parents=True, exist_ok=True)
    torch.save(parts, tmp_root / f"part-{rt.rank}-of-{rt.world_size}.pt")
    rt.barrier()
    if rt.is_main:
        _assemble(tmp_root, missing, wanted, rt.world_size, n, k)
    rt.barrier()


def _assemble(tmp_root: Path, missing: list[str], wanted: dict[str, tuple[Path, dict[str, Any]]], world: int,
              n: int, k: int) -> None:
    parts = [torch.load(tmp_root / f"part-{r}-of-{world}.pt", weights_only=True) for r in range(world)]
    for name in missing:
        first = parts[0][name]
        full = torch.empty((n, k, *first.shape[2:]), dtype=first.dtype)
        for p in parts:
            full[p["index"]] = p[name]
        path, payload = wanted[name]
        staging = tmp_root / name
        staging.mkdir(exist_ok=True)
        np.save(staging / "data.npy", full.numpy())
        atomic_write_json(staging / "meta.json", {"key": payload, "shape": list(full.shape), "dtype": str(full.dtype),
                                                  "created": time.strftime("%Y-%m-%d %H:%M:%S %z")})
        if _valid(path, payload, tuple(full.shape[:2])):
            continue  # another run finished the same entry meanwhile
        if path.exists():
            log.warning("teacher cache: %s is stale or incomplete; rebuilt", path)
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(staging, path)
        except OSError:
            if not _valid(path, payload, tuple(full.shape[:2])):
                raise
    shutil.rmtree(tmp_root, ignore_errors=True)
