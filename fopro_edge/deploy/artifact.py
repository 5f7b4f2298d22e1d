"""ModelArtifact: one exported file (plus its side files) with size, hash, lineage and metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fopro_edge.io import sha256_files


@dataclass(frozen=True)
class ModelArtifact:
    """An exported model: ``path`` is the main file (``.onnx``, ``.xml``, ``.engine``); ``files``
    lists every file that belongs to it (e.g. the IR's ``.bin``); size and hash cover them all."""

    path: Path
    target: str  # onnx | onnxruntime | openvino | tensorrt
    precision: str  # fp32 | fp16 | int8
    size_bytes: int
    sha256: str
    files: tuple[Path, ...]
    parent: str | None = None  # sha256 of the artifact (or checkpoint) this one was made from
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_files(
        cls,
        path: str | Path,
        target: str,
        precision: str,
        *,
        extra_files: Sequence[str | Path] = (),
        parent: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ModelArtifact:
        files = (Path(path), *(Path(p) for p in extra_files))
        return cls(
            path=Path(path),
            target=target,
            precision=precision,
            size_bytes=sum(p.stat().st_size for p in files),
            sha256=sha256_files(files),
            files=files,
            parent=parent,
            metadata=dict(metadata or {}),
        )

    def rehashed(self) -> ModelArtifact:
        """The same artifact after its files were rewritten in place: size and hash read again."""
        return ModelArtifact.from_files(self.path, self.target, self.precision, extra_files=self.files[1:],
                                        parent=self.parent, metadata=self.metadata)

    @property
    def size_mib(self) -> float:
        return self.size_bytes / (1 << 20)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "target": self.target,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "files": [str(p) for p in self.files],
            "parent": self.parent,
            "metadata": self.metadata,
        }
