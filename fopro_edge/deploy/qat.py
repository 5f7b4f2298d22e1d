"""Quantization-aware distillation (QAT-KD): the fake-quantized student learns from the FP32 student.

NNCF inserts the fake quantizers (``nncf.quantize`` on the PyTorch student, calibrated on the
rare-stratified calibration images, 7-bit weights where the deployment CPU saturates). The
quantized copy is then fine-tuned for a bounded number of steps on the train split, rare classes
drawn more often (sqrt sampler), with logit KD from the frozen FP32 student plus the
Balanced-Softmax loss (its prior follows the sampler), and stopped early on the selection images:
the gate passed, then fewest rare right->wrong flips, then fewest changed predictions, then balanced
accuracy. Those scores come from the artifact each checkpoint exports to, run by its runtime: the
runtime's INT8 kernels do not compute what PyTorch's fake quantizers compute (on the digits demo an
OpenVINO IR failed the gate where its fake-quantized source lost no rare image). The result is
exported like any PyTorch model: QDQ ONNX for ONNX Runtime / TensorRT, an IR for OpenVINO.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QATStep:
    step: int
    loss: float
    passed: bool  # the gate, on the selection images
    rare_clear_losses: int  # rare images right -> wrong that were not close calls
    rare_close_calls: int
    flips: int
    balanced_accuracy: float


@dataclass(frozen=True)
class QATResult:
    model: Any  # the fake-quantized student, eval mode, on the CPU
    best_step: int
    steps: int
    seconds: float
    device: str
    history: tuple[QATStep, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "steps": self.steps, "seconds": round(self.seconds, 1),
                "device": self.device, "history": [asdict(h) for h in self.history]}


def _nncf_torch():
    """NNCF for PyTorch. It compiles a small C++ extension for fake quantization on first use
    (about a minute on 2 cores, cached afterwards); its own one-minute limit is too short there, so
    it gets ten. A load that still times out (e.g. behind a lock file left by a stopped build) makes
    the QAT-KD try an error in the repair table, not a hang."""
    from fopro_edge.deploy.openvino_backend import _nncf

    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
    nncf = _nncf()
    _clear_stale_build_lock()
    return nncf


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op threads set to the profile's ``threads`` for the block (None: unchanged),
    so QAT-KD shares the CPU as the checks do."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


STALE_LOCK_S = 900  # far longer than the extension build takes, even on a busy 2-core machine


def _clear_stale_build_lock() -> None:
    """torch's extension builder guards a build with a ``lock`` file; a build that was killed leaves
    it behind, and every later load waits on it for ever (NNCF's FAQ: "importing anything from
    nncf.torch hangs"). A lock older than any build takes is removed, with a warning."""
    try:
        from nncf.torch.extensions import get_build_directory_for_extension

        lock = Path(get_build_directory_for_extension("quantized_functions_cpu")) / "lock"
    except (ImportError, AttributeError, OSError):  # another NNCF layout: leave it to NNCF
        return
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        log.warning("removing %s, left %.0f min ago by an extension build that did not finish", lock, age / 60)
        lock.unlink(missing_ok=True)


def fold_batchnorm(student: Any) -> Any:
    """A copy of ``student`` (eval mode) with every BatchNorm folded into the convolution before it,
    as the ONNX export folds them: the fake quantizers then see the weights the runtime will use.
    timm's ``BatchNormAct2d`` keeps its activation. Checked numerically against the original."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(student).cpu().eval()
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
                setattr(parent, bn_name, nn.Sequential(*rest) if rest else nn.Identity())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = student.cpu().eval()(x), model(x)
    if not torch.allclose(want, got, rtol=1e-3, atol=1e-3 * float(want.abs().max())):
        raise RuntimeError(f"folding BatchNorm changed the student's logits (max |diff| {float((want - got).abs().max()):.3g})")
    return model


def fake_quantize(student: Any, images: np.ndarray, *, preset: str, seven_bit_weights: bool) -> Any:
    """``nncf.quantize`` of the PyTorch student (BatchNorm folded): fake quantizers calibrated on
    ``images``. ``preset``: performance (symmetric activations) | mixed (asymmetric, u8 in ONNX).

    ``seven_bit_weights``: every weight uses integers in [-64, 64] only (NNCF's PyTorch backend does
    not apply ``overflow_fix``): a symmetric quantizer with twice the scale, exported as int8.
    """
    import torch

    nncf = _nncf_torch()
    from nncf.torch.quantization.layers import SymmetricQuantizer

    batches = [torch.from_numpy(images[i:i + 16]) for i in range(0, len(images), 16)]
    with _squeeze_excitation_quantized():
        model = nncf.quantize(fold_batchnorm(student), nncf.Dataset(batches), preset=nncf.QuantizationPreset(preset),
                              subset_size=len(batches))  # every image, 16 per item
    if seven_bit_weights:
        with torch.no_grad():
            for q in model.modules():
                if isinstance(q, SymmetricQuantizer) and q.per_channel:  # weights; activations are per-tensor
                    q.scale.mul_(2.0)
    return model


@contextmanager
def _squeeze_excitation_quantized() -> Iterator[None]:
    """NNCF's PyTorch backend leaves both 1x1 convolutions of every squeeze-excitation block in float
    (its ``SE_BLOCK`` ignored pattern): 18 of the 54 weighted ops of a MobileNetV3-small. ONNX
    Runtime's and OpenVINO's PTQ quantize them, and QAT-KD trains their quantizers, so here that
    pattern is set aside for the one ``nncf.quantize`` call; the INT8 step reports the coverage."""
    try:
        from nncf.common.graph.patterns import IgnoredPatternNames
        from nncf.torch.quantization.ignored_patterns import PT_IGNORED_PATTERNS

        registry = PT_IGNORED_PATTERNS.registry_dict
    except (ImportError, AttributeError):  # another NNCF layout: its defaults stand (and the coverage says so)
        yield
        return
    saved = registry.pop(IgnoredPatternNames.SE_BLOCK, None)
    try:
        yield
    finally:
        if saved is not None:
            registry[IgnoredPatternNames.SE_BLOCK] = saved


def _set_export_mode(model: Any, mode: str) -> None:
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    for q in model.modules():
        if isinstance(q, BaseQuantizer):
            q.set_export_mode(QuantizerExportMode(mode))


def export_qdq_onnx(model: Any, info: Any, path: Any, *, opset: int, dynamic_batch: bool, batch_size: int) -> Any:
    """The fake-quantized student as a QDQ ONNX model (QuantizeLinear/DequantizeLinear pairs)."""
    from fopro_edge.deploy.onnx_backend import export_onnx

    _set_export_mode(model, "quantize_dequantize")
    try:
        art = export_onnx(model, info, path, opset=opset, dynamic_batch=dynamic_batch, batch_size=batch_size)
    finally:
        _set_export_mode(model, "fake_quantize")
    store_int8_weights(art.path)
    return art


def store_int8_weights(path: Any) -> int:
    """Replace ``QuantizeLinear(constant weight)`` by the int8 tensor it computes, so the file stores
    INT8 weights feeding DequantizeLinear (as ONNX Runtime's own quantizer writes them). Returns
    how many weights were stored."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    value = {**{k: numpy_helper.to_array(v) for k, v in inits.items()}, **consts}
    dropped, stored = [], 0
    for node in g.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits or len(node.input) < 3:
            continue
        if node.input[1] not in value or node.input[2] not in value:
            continue
        w, scale, zp = value[node.input[0]], value[node.input[1]], value[node.input[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w / scale) + zp.astype(np.int32), info.min, info.max).astype(zp.dtype)
        name = f"{node.input[0]}_int8"
        g.initializer.append(numpy_helper.from_array(q, name))
        for user in g.node:
            for i, inp in enumerate(user.input):
                if inp == node.output[0]:
                    user.input[i] = name
        dropped.append(node)
        stored += 1
    for node in dropped:
        g.node.remove(node)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    onnx.save(model, str(path))
    return stored


def to_openvino(model: Any, image_size: int) -> Any:
    """The fake-quantized student as an OpenVINO model (FakeQuantize ops, compiled to INT8)."""
    import torch

    from fopro_edge.deploy.openvino_backend import _ov

    example = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))  # global RNG untouched
    return _ov().convert_model(model.cpu().eval(), example_input=example)


def _score(labels: np.ndarray, reference: np.ndarray, logits: np.ndarray, rare_ids: list[int], check: Any) -> tuple:
    """The gate on these logits (``check``: its thresholds, a ``GateConfig``) as (passed, clear rare
    losses, rare close calls lost, changed decisive predictions, balanced accuracy)."""
    from fopro_edge.deploy.gate import evaluate_gate

    names = [str(i) for i in range(reference.shape[1])]
    r = evaluate_gate(labels, reference, logits, names, [names[i] for i in rare_ids], check)
    f = r.flips
    return r.passed, f.rare_clear_right_to_wrong, f.rare_close_calls, f.total - f.close_calls, r.candidate.balanced_accuracy


def _nothing_to_fix(score: tuple) -> bool:
    """The gate passed with no clear rare loss and no decisive flip (a :func:`_score`): what is
    left is close calls tipping either way, which training on the selection images cannot fix for
    other images (docs/export.md, "Why auto starts with PTQ")."""
    passed, rare_clear_losses, _, flips, _ = score
    return passed and rare_clear_losses == flips == 0


def qat_kd_loss(s_logits: Any, t_logits: Any, labels: Any, bsm: Any, *, temperature: float, bsm_weight: float) -> Any:
    """QAT-KD's objective: logit KD (KL at ``temperature``, scaled by T²) from the FP32 student plus
    ``bsm_weight`` x Balanced Softmax on the labels."""
    import torch.nn.functional as F

    T = temperature
    kd = F.kl_div(F.log_softmax(s_logits / T, 1), F.log_softmax(t_logits / T, 1), reduction="batchmean",
                  log_target=True) * T * T
    return kd + bsm_weight * bsm(s_logits, labels)


def qat_distill(
    student: Any,
    quantized: Any,
    train: Any,
    *,
    image_size: int,
    config: Any,
    augment: str = "none",
    flips: bool = True,
    select_images: np.ndarray,
    select_labels: np.ndarray,
    select_reference: np.ndarray,
    rare_ids: list[int],
    check: Any,
    seed: int = 0,
    deployed_logits: Callable[[Any], np.ndarray] | None = None,
) -> QATResult:
    """Fine-tune ``quantized`` (from :func:`fake_quantize`) against the FP32 ``student``.

    ``train``: the train :class:`~fopro_edge.data.ImageList`; ``config``: a ``QATConfig``;
    ``augment`` / ``flips``: the recipe's training augmentation; ``check``: the gate's thresholds
    (``GateConfig``), so the early stop counts rare losses as the gate does;
    ``deployed_logits(model)``: the selection images' logits of the artifact ``model`` exports to, in
    its runtime (the model may come back on the CPU); None scores the fake-quantized model in PyTorch.
    """
    import torch

    from fopro_edge.data import CheckedDataLoader, ImageDataset, build_sampler, build_transform
    from fopro_edge.distill.losses import BalancedSoftmax

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    device = "cuda" if config.device == "auto" and torch.cuda.is_available() else ("cpu" if config.device == "auto" else config.device)
    labels = np.asarray(train.labels, np.int64)
    num_classes = int(select_reference.shape[1])
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    prior = np.sqrt(counts) if config.sampler == "sqrt" else (counts > 0).astype(np.float64) if config.sampler == "balanced" else counts
    bsm = BalancedSoftmax(np.maximum(prior, 1e-12)).to(device)
    tf = build_transform(image_size, augment=augment, training=True, flips=flips)
    loader = CheckedDataLoader(
        ImageDataset(train, tf), batch_size=config.batch_size, drop_last=len(labels) >= config.batch_size,
        sampler=build_sampler(labels, config.sampler, num_samples=config.steps * config.batch_size, seed=seed),
        shuffle=False, num_workers=0,
    )
    teacher = copy.deepcopy(student).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    model = quantized.to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    sel = torch.from_numpy(np.ascontiguousarray(select_images, dtype=np.float32))

    def evaluate() -> tuple:
        model.eval()
        if deployed_logits is not None:
            logits = np.asarray(deployed_logits(model), np.float32)
            model.to(device)
        else:
            with torch.no_grad():
                logits = torch.cat([model(sel[i:i + 64].to(device)).float().cpu() for i in range(0, len(sel), 64)]).numpy()
        model.train()
        return _score(select_labels, select_reference, logits, rare_ids, check)

    def key(s: tuple) -> tuple:
        passed, clear, close_lost, flips, bacc = s
        return (passed, -clear, -close_lost, -flips, bacc)

    history: list[QATStep] = []
    best_score = evaluate()
    history.append(QATStep(0, float("nan"), *best_score))
    log.info("QAT step 0 (the quantized start): selection: gate passed %s, rare losses %d (close calls lost %d), "
             "decisive flips %d, bal. acc %.4f", *best_score)
    best_state, best_step, stale, step, running = copy.deepcopy(model.state_dict()), 0, 0, 0, 0.0
    T = config.temperature
    model.train()
    for x, y, _ in () if _nothing_to_fix(best_score) else loader:  # a clean start is returned untrained
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t_logits = teacher(x).float()
        s_logits = model(x).float()
        loss = qat_kd_loss(s_logits, t_logits, y, bsm, temperature=T, bsm_weight=config.bsm_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        running += float(loss.detach())
        if step % config.eval_every == 0 or step == config.steps:
            s = evaluate()
            history.append(QATStep(step, running / config.eval_every, *s))
            running = 0.0
            log.info("QAT step %d/%d: loss %.4f, selection: gate passed %s, rare losses %d (close calls lost %d), "
                     "decisive flips %d, bal. acc %.4f",
                     step, config.steps, history[-1].loss, *s)
            if key(s) > key(best_score):
                best_score, best_state, best_step, stale = s, copy.deepcopy(model.state_dict()), step, 0
                if _nothing_to_fix(s):
                    break
            else:
                stale += 1
                if stale >= config.patience:
                    break
        if step >= config.steps:
            break
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    return QATResult(model, best_step, step, time.perf_counter() - t0, device, tuple(history))
