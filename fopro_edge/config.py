"""Typed recipe schema and its strict loader.

A recipe is YAML read with ``yaml.safe_load`` and converted into frozen dataclasses. Every
problem (unknown or misspelt key, wrong type, out-of-range value, missing path) raises
:class:`ConfigError` as one line: ``FILE: dotted.key: problem (hint)``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fopro_edge.errors import ConfigError
from fopro_edge.schema import (  # noqa: F401 - convert_section, read_yaml_mapping: the schema engine, re-exported
    _Context,
    _convert,
    _fail,
    convert_section,
    parse_override,
    path_,
    range_,
    read_yaml_mapping,
)

METHODS = ("ce", "bsm", "ekd", "ekd+fpg", "ekd+randfpg", "fopro")


@dataclass(frozen=True)
class GroupsConfig:
    """Many/medium/few groups by train count: many > many_above, few < few_below; the tail: count <
    tail_below (default: the medium and few groups, count <= many_above)."""

    many_above: int = field(default=100, metadata=range_(0))
    few_below: int = field(default=20, metadata=range_(1))
    rare_classes: list[str] | None = None  # default: the few group
    tail_below: int | None = field(default=None, metadata=range_(1))


@dataclass(frozen=True)
class DemoConfig:
    """The embedded offline demo: scikit-learn's digits resampled to a long tail."""

    max_per_class: int = field(default=150, metadata=range_(10))
    imbalance_ratio: float = field(default=30.0, metadata=range_(1.0))
    eval_per_class: int = field(default=12, metadata=range_(2))


@dataclass(frozen=True)
class SyntheticConfig:
    """Generated long-tailed images (tests, smoke runs)."""

    num_classes: int = field(default=5, metadata=range_(2))
    max_per_class: int = field(default=40, metadata=range_(2))
    imbalance_ratio: float = field(default=10.0, metadata=range_(1.0))
    eval_per_class: int = field(default=6, metadata=range_(1))
    image_size: int = field(default=32, metadata=range_(8))


@dataclass(frozen=True)
class DataConfig:
    source: Literal["folder", "csv", "digits", "synthetic"] = "digits"
    root: str | None = field(default=None, metadata=path_("dir"))  # tree root, or CSV image folder
    train_csv: str | None = field(default=None, metadata=path_("file"))
    val_csv: str | None = field(default=None, metadata=path_("file"))
    test_csv: str | None = field(default=None, metadata=path_("file"))
    image_ext: str = ".jpg"
    label_column: str = "finding"
    image_column: str = "image"
    val_fraction: float = field(default=0.15, metadata=range_(0.0, 0.9, lo_open=True))
    test_fraction: float = field(default=0.15, metadata=range_(0.0, 0.9, lo_open=True))
    split_seed: int | None = field(default=None, metadata=range_(0))  # seed of the split; default: the recipe's seed
    # folder source: one class-per-folder tree to split, or root/{train,val,test}/<class> used as given
    layout: Literal["auto", "tree", "presplit"] = "auto"
    split_file: str | None = field(default=None, metadata=path_("file"))  # folder source: CSV path,split (or fold)
    folds: int | None = field(default=None, metadata=range_(1, 100))  # stratified k-fold (null or 1: off)
    fold: int = field(default=0, metadata=range_(0))  # the test fold (of data.folds, or of the split file's folds)
    image_size: int = field(default=224, metadata=range_(16, 1024))
    batch_size: int = field(default=32, metadata=range_(2))
    eval_batch_size: int = field(default=64, metadata=range_(1))
    num_workers: int = field(default=2, metadata=range_(0, 64))
    sampler: Literal["instance", "balanced", "sqrt"] = "instance"
    augment: Literal["none", "light", "timm"] = "light"
    flips: bool = True  # random h/v flips in training augmentation
    bad_images: Literal["error", "skip"] = "error"
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class TeacherConfig:
    model: str = "tf_efficientnet_lite0"
    pretrained: bool = False  # weights from the timm hub (needs internet)
    # Local weights: a file path, or "package:<python package>" for a weight file shipped in a package.
    weights: str | None = field(default=None, metadata=path_("weights"))
    weights_mapping: Literal["auto", "keys", "order"] = "auto"
    model_args: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments, e.g. img_size
    strip_prefixes: list[str] = field(default_factory=lambda: ["module.", "encoder_q.", "backbone."])
    # the teacher's input size, independent of the student's; default: the model's own (timm pretrained_cfg)
    image_size: int | None = field(default=None, metadata=range_(16, 1024))


@dataclass(frozen=True)
class StudentConfig:
    model: str = "mobilenetv3_large_100"
    pretrained: bool = False
    # Local backbone weights (as teacher.weights); a classifier of another class count keeps its fresh init.
    weights: str | None = field(default=None, metadata=path_("weights"))
    weights_mapping: Literal["auto", "keys", "order"] = "auto"
    strip_prefixes: list[str] = field(default_factory=lambda: ["module.", "encoder_q.", "backbone."])
    projector_hidden: int | None = field(default=None, metadata=range_(8))  # default: student feature size
    model_args: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    drop_rate: float = field(default=0.0, metadata=range_(0.0, 0.9))


@dataclass(frozen=True)
class PromptConfig:
    """Fourier Prompt Generator: bounded amplitude gain exp(alpha * tanh(P + G(log1p|X|)))."""

    alpha: float = field(default=1.0, metadata=range_(0.0, 5.0, lo_open=True))
    band: Literal["all", "low", "high"] = "all"
    band_radius: float = field(default=0.25, metadata=range_(0.0, 1.0, lo_open=True))
    conditional: bool = True
    conditional_channels: int = field(default=8, metadata=range_(1, 128))
    gain: Literal["bins", "smooth"] = "bins"  # a value per frequency bin, or smooth over radius × orientation
    radial_bins: int = field(default=8, metadata=range_(1, 256))
    orientation_bins: int = field(default=4, metadata=range_(1, 64))
    channels: Literal["auto", "shared", "per_channel"] = "auto"  # auto: one gain for all channels of grey images
    # ekd+randfpg: mean |log gain| of the fixed random prompt (set it to a learned prompt's, explore.json gain)
    random_log_gain: float = field(default=0.1, metadata=range_(0.0, 5.0))
    random_seed: int | None = field(default=None, metadata=range_(0))  # its draw; default: the run's seed


@dataclass(frozen=True)
class ExploreConfig:
    """Stage 1: FPG + linear probe on the frozen teacher, then the clean / prompted probe diagnostic."""

    steps: int = field(default=200, metadata=range_(0))  # optimizer steps, cycling the train loader
    lr: float = field(default=3e-3, metadata=range_(0.0, 10.0, lo_open=True))  # 1e-3 barely moves the prompt (docs/method.md)
    probe_lr: float = field(default=1e-2, metadata=range_(0.0, 10.0, lo_open=True))
    gain_l2: float = field(default=0.01, metadata=range_(0.0))
    probe_seeds: int = field(default=5, metadata=range_(2, 100))  # diagnostic: train resamples, one probe pair each
    probe_init: Literal["clean", "zero"] = "clean"  # clean: the probe starts fitted to the clean teacher features
    probe_every: int = field(default=1, metadata=range_(0))  # a probe refit step after every N prompt steps (0: never)
    select_every: int = field(default=25, metadata=range_(0))  # score the prompt on val every N steps, keep the best (0: the last)


@dataclass(frozen=True)
class AKDConfig:
    """Stage 3: adversarial FPG steps during distillation."""

    every: int = field(default=4, metadata=range_(1))
    # first epoch (0-based) with AKD steps; default: once EKD has warmed up, a fifth of distill.epochs (at least 1)
    start_epoch: int | None = field(default=None, metadata=range_(0))
    lr: float = field(default=1e-3, metadata=range_(0.0, 10.0, lo_open=True))
    probe_weight: float = field(default=1.0, metadata=range_(0.0))
    gain_l2: float = field(default=0.1, metadata=range_(0.0))


@dataclass(frozen=True)
class TeacherCacheConfig:
    """K fixed training views per image, and the frozen teacher's features of them computed once.

    On, every method trains on the same views (seeded by ``view_seed``); the teacher's features are
    cached where its input is fixed (ekd, ekd+fpg, ekd+randfpg) and computed live for fopro.
    """

    mode: bool | Literal["auto"] = "auto"  # on (true) / off (false); auto: on when training on CPU
    views: int = field(default=8, metadata=range_(1, 1000))
    view_seed: int = field(default=0, metadata=range_(0))
    dir: str | None = None  # default: $FOPRO_EDGE_CACHE, else ~/.cache/fopro-edge
    max_view_mib: int = field(default=2048, metadata=range_(0))  # store the student views up to this size, else re-render


@dataclass(frozen=True)
class DistillConfig:
    method: Literal["ce", "bsm", "ekd", "ekd+fpg", "ekd+randfpg", "fopro"] = "fopro"
    epochs: int = field(default=100, metadata=range_(1))
    align_weight: float = field(default=3.0, metadata=range_(0.0))  # lambda of the EKD alignment loss
    # drw: effective-number class weights (beta 0.9999) on the alignment loss from 0.8 of the epochs on
    align_balance: Literal["none", "drw"] = "none"
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    akd: AKDConfig = field(default_factory=AKDConfig)
    teacher_cache: TeacherCacheConfig = field(default_factory=TeacherCacheConfig)


@dataclass(frozen=True)
class EvalConfig:
    """How the student's logits are read: in the run's evaluation and, baked into the classifier bias, in every export."""

    # test-time logit adjustment: argmax(logits - tau * log train prior); 0: off; auto: tau chosen on val
    logit_adjust: float | Literal["auto"] = field(default=0.0, metadata=range_(0.0, 10.0))


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = field(default=3e-4, metadata=range_(0.0, 10.0, lo_open=True))
    weight_decay: float = field(default=0.0, metadata=range_(0.0))
    momentum: float = field(default=0.9, metadata=range_(0.0, 1.0))
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = field(default=0.0, metadata=range_(0.0))
    min_lr: float = field(default=1e-6, metadata=range_(0.0))
    grad_clip: float | None = field(default=5.0, metadata=range_(0.0, lo_open=True))


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, none on CPU
    channels_last: bool = True  # CUDA only
    threads: int | None = field(default=None, metadata=range_(1))
    log_interval: int = field(default=20, metadata=range_(1))
    deterministic: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str = "run"
    seed: int = field(default=0, metadata=range_(0))
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # Free-form per-target export overrides, validated by the export profile loader.
    export: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_teacher(self) -> bool:
        return self.distill.method not in ("ce", "bsm")

    @property
    def uses_prompt(self) -> bool:
        return self.distill.method in ("ekd+fpg", "ekd+randfpg", "fopro")

    @property
    def akd_start_epoch(self) -> int:
        a = self.distill.akd.start_epoch
        return min(self.distill.epochs - 1, max(1, round(0.2 * self.distill.epochs))) if a is None else a

    @property
    def live_teacher(self) -> bool:
        """The teacher's input changes during training (AKD moves the prompt): its features cannot be cached."""
        return self.distill.method == "fopro"


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = (), *, check_paths: bool = True,
                saved: bool = False) -> Recipe:
    """Read a recipe file, apply ``key=value`` overrides, validate and return it.

    Relative paths in the recipe are resolved against the recipe's folder. ``saved``: a run's
    recipe.yaml (see :func:`recipe_from_dict`).
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "recipe", allow_empty=False)
    return recipe_from_dict(raw, overrides, source=str(path), base_dir=path.parent, check_paths=check_paths,
                            saved=saved)


def recipe_from_dict(
    raw: dict[str, Any],
    overrides: typing.Sequence[str] = (),
    *,
    source: str = "<recipe>",
    base_dir: Path | None = None,
    check_paths: bool = True,
    saved: bool = False,
) -> Recipe:
    """``saved``: a recipe recorded by an earlier run (checkpoint, run directory), whose renamed keys
    are dropped rather than refused, so old runs still export, evaluate and report."""
    if saved:
        raw = _without_renamed(raw)
    raw = _apply_overrides(raw, overrides, source)
    ctx = _Context(source, base_dir or Path.cwd(), check_paths)
    _check_renamed(raw, ctx)
    recipe = _convert(Recipe, raw, "", ctx)
    _check_recipe(recipe, ctx)
    return recipe


RENAMED = {
    "distill.explore.epochs": "replaced by distill.explore.steps (optimizer steps; one pass over the train "
                              "split is about train images / data.batch_size steps)",
}


def _without_renamed(raw: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for dotted in RENAMED:
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def _check_renamed(raw: dict[str, Any], ctx: _Context) -> None:
    for dotted, hint in RENAMED.items():
        node: Any = raw
        for part in dotted.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is not KeyError:
            _fail(ctx, dotted, hint)


def _check_recipe(r: Recipe, ctx: _Context) -> None:
    """Rules that span several keys."""
    d = r.data
    if d.source == "folder" and d.root is None:
        _fail(ctx, "data.root", "required when data.source is 'folder' (the class-per-folder tree)")
    if d.source == "csv":
        if d.train_csv is None:
            _fail(ctx, "data.train_csv", "required when data.source is 'csv'")
        if d.root is None:
            _fail(ctx, "data.root", "required when data.source is 'csv' (the image folder)")
    g = d.groups
    if g.few_below > g.many_above + 1:
        _fail(ctx, "data.groups.few_below", f"{g.few_below} must be <= many_above + 1 = {g.many_above + 1} (or a class could be both 'many' and 'few')")
    if d.val_fraction + d.test_fraction >= 0.9:
        _fail(ctx, "data.test_fraction", f"val_fraction + test_fraction = {d.val_fraction + d.test_fraction:g} leaves too little to train on (keep it below 0.9)")
    _check_split_keys(d, ctx)
    if r.teacher.pretrained and r.teacher.weights:
        _fail(ctx, "teacher.weights", "set either teacher.pretrained (hub) or teacher.weights (local file), not both")
    if not r.name or any(c in r.name for c in "/\\"):
        _fail(ctx, "name", f"'{r.name}' cannot name a run folder (use letters, digits, '-', '_')")
    problem = device_problem(r.runtime.device)
    if problem:
        _fail(ctx, "runtime.device", problem)
    if r.runtime.amp == "fp16" and r.runtime.device == "cpu":
        _fail(ctx, "runtime.amp", "fp16 autocast needs CUDA (use bf16 or none on CPU)")
    for key, name in (("teacher.model", r.teacher.model if r.uses_teacher else None), ("student.model", r.student.model)):
        if name is not None:
            problem = _model_problem(name)
            if problem:
                _fail(ctx, key, problem)
    _check_distill(r, ctx)
    if r.export:
        from fopro_edge.deploy.profiles import validate_recipe_export  # lazy: the profiles are only needed when a recipe has an export section

        validate_recipe_export(r.export, ctx.source)


def _check_split_keys(d: DataConfig, ctx: _Context) -> None:
    """data.layout, data.split_file, data.folds and data.fold: folder source only, and consistent."""
    kfold = d.folds is not None and d.folds > 1
    if d.source != "folder":
        for key, used in (("layout", d.layout != "auto"), ("split_file", d.split_file), ("folds", kfold), ("fold", d.fold)):
            if used:
                _fail(ctx, f"data.{key}", f"applies to data.source: folder only (this recipe reads '{d.source}')")
    if d.layout == "presplit" and (kfold or d.split_file):
        key = "data.folds" if kfold else "data.split_file"
        _fail(ctx, key, "a pre-split tree (data.layout: presplit) is used as given; set data.layout: tree to re-split it")
    if kfold and d.fold >= d.folds:
        _fail(ctx, "data.fold", f"{d.fold} is out of range (folds are 0..{d.folds - 1} with data.folds: {d.folds})")
    if d.fold and not kfold and not d.split_file:
        _fail(ctx, "data.fold", "picks the test fold: set data.folds (k-fold) or a data.split_file with fold numbers")


def _check_distill(r: Recipe, ctx: _Context) -> None:
    dc = r.distill
    if dc.method == "fopro" and dc.akd.start_epoch is not None and dc.akd.start_epoch >= dc.epochs:
        _fail(ctx, "distill.akd.start_epoch", f"{dc.akd.start_epoch} must be < distill.epochs = {dc.epochs} (AKD would never run)")


def device_problem(device: str) -> str | None:
    """Why ``device`` is not one of auto, cpu, cuda, cuda:N (None when it is)."""
    if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return None
    return f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)"


def _model_problem(name: str) -> str | None:
    import timm  # lazy: heavy

    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see timm.list_models()"
    return f"unknown timm model '{name}' ({hint})"


def save_recipe(recipe: Recipe, path: Path) -> None:
    from fopro_edge.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def _apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str], source: str) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{k}' is not a section")
            node = child
        node[keys[-1]] = value
    return out
