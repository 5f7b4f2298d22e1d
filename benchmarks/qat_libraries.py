"""Which library should do the fake quantization for QAT-KD? NNCF vs PyTorch PT2E (torchao) vs NVIDIA ModelOpt.

The same task for every library, on the CPU, one thread:

* start: the FP32 student with BatchNorm folded (``fopro_edge.deploy.qat.fold_batchnorm``);
* calibration: the same class-stratified train images (``select_calibration``, default 300);
* QAT-KD: the same number of Adam steps (lr 1e-5, batch 32), the same batches (indices drawn once by
  the project's sqrt class-balanced sampler, eval-transformed images, no augmentation), the same loss
  (KL with T=2 from the frozen FP32 student, plus 0.5 x Balanced Softmax with the sampler's prior),
  gradient clipping at 5, forward passes in eval mode (no dropout) for all; fixed step count, no early stop;
* scores on val and test against the FP32 student: balanced accuracy, changed predictions (flips),
  rare-class right->wrong flips, after calibration (PTQ start) and after QAT;
* export: QDQ ONNX -> ONNX Runtime (logit diff, argmax agreement vs the PyTorch fake-quant model,
  file size, Q/DQ node counts), and whether OpenVINO reads / compiles / runs the same file.

Quantization schemes (8-bit everywhere; what each library gives):

* NNCF 3.4 ``nncf.quantize(preset=performance)``: per-channel symmetric int8 weights, per-tensor
  symmetric activations (unsigned after ReLU-like ops), scales trainable during QAT;
* PT2E (torchao ``X86InductorQuantizer``, ``is_qat=True``): per-channel symmetric int8 weights,
  per-tensor *asymmetric* uint8 activations; observers calibrated on all calibration images in one
  batch (min/max), then frozen for the QAT steps;
* ModelOpt ``mtq.INT8_DEFAULT_CFG``: per-channel symmetric int8 weights (axis 0), per-tensor symmetric
  int8 inputs of Conv/Linear (max calibration), amax fixed during QAT.

Run (what produced benchmarks/results/qat_libraries_demo.*; a venv with torch 2.14.1, the project,
nncf, onnx, onnxruntime, openvino, torchao and nvidia-modelopt):

    OMP_NUM_THREADS=1 VENV/bin/python benchmarks/qat_libraries.py \\
        --checkpoint RUN/checkpoints/best.pt \\
        --out benchmarks/results/qat_libraries_demo --steps 150 --weight-bits 8,7 --libraries nncf,pt2e,modelopt

then the setup facts seen while installing/running were added as notes, re-rendering without rerunning:
``--render-from <that run's .json> --note "..."`` (the --note lines are in the notes of the .json/.md).

A library that is missing or fails is reported with its error line, not fatal.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata as md
import inspect
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


# ----------------------------------------------------------------------------------------- common

class Task:
    """Everything the libraries share: data, FP32 reference, the folded start, the batches."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from fopro_edge.config import recipe_from_dict
        from fopro_edge.data import build_sampler, build_splits
        from fopro_edge.deploy.calibration import load_images, select_calibration
        from fopro_edge.deploy.qat import fold_batchnorm
        from fopro_edge.distill.checkpoint import load_student

        self.args = args
        student, info = load_student(args.checkpoint)
        self.student, self.info = student.cpu().eval(), info
        recipe = recipe_from_dict(info.recipe, check_paths=False)
        self.splits = build_splits(recipe.data, recipe.seed)
        names = list(info.class_names)
        self.num_classes = len(names)
        self.rare_ids = [names.index(n) for n in info.rare_classes if n in names]
        size = info.image_size
        tr = self.splits.train
        self.train_labels = np.asarray(tr.labels, np.int64)
        cal = select_calibration(self.train_labels, names, info.rare_classes, args.calibration_size, args.seed)
        self.cal_images = load_images(tr, list(cal.indices), size)
        self.eval_sets = {}
        for split in ("val", "test"):
            lst = getattr(self.splits, split)
            self.eval_sets[split] = (load_images(lst, list(range(len(lst.labels))), size), np.asarray(lst.labels, np.int64))
        # the batches: one index sequence from the project's sampler, shared by every library
        sampler = build_sampler(self.train_labels, args.sampler, num_samples=args.steps * args.batch_size, seed=args.seed)
        order = np.asarray(list(sampler) if sampler is not None
                           else np.random.default_rng(args.seed).permutation(np.resize(np.arange(len(self.train_labels)),
                                                                                      args.steps * args.batch_size)), np.int64)
        used = np.unique(order)
        imgs = load_images(tr, list(used), size)
        pos = {int(i): k for k, i in enumerate(used)}
        self.batches = [(torch.from_numpy(imgs[[pos[int(i)] for i in order[s:s + args.batch_size]]]),
                         torch.from_numpy(self.train_labels[order[s:s + args.batch_size]]))
                        for s in range(0, len(order), args.batch_size)]
        counts = np.bincount(self.train_labels, minlength=self.num_classes).astype(np.float64)
        self.prior = np.sqrt(counts) if args.sampler == "sqrt" else (counts > 0) * 1.0 if args.sampler == "balanced" else counts
        self.folded = fold_batchnorm(self.student)
        self.fp32 = {s: self.logits(self.student, x) for s, (x, _) in self.eval_sets.items()}

    @staticmethod
    def logits(model: Any, images: np.ndarray, bs: int = 64) -> np.ndarray:
        import torch

        with torch.no_grad():
            return torch.cat([model(torch.from_numpy(images[i:i + bs])).float() for i in range(0, len(images), bs)]).numpy()

    def score(self, model: Any) -> dict[str, Any]:
        from fopro_edge.deploy.gate import scores

        out = {}
        for split, (x, y) in self.eval_sets.items():
            logit = self.logits(model, x)
            pred, ref = logit.argmax(1), self.fp32[split].argmax(1)
            rare = np.isin(y, self.rare_ids)
            out[split] = {
                "balanced_accuracy": round(float(scores(y, pred, self.num_classes, self.rare_ids).balanced_accuracy), 4),
                "flips": int((pred != ref).sum()),
                "rare_right_to_wrong": int(((ref == y) & (pred != y) & rare).sum()),
                "max_abs_logit_diff_vs_fp32": round(float(np.abs(logit - self.fp32[split]).max()), 4),
                "images": int(len(y)),
            }
        return out

    def fp32_scores(self) -> dict[str, Any]:
        from fopro_edge.deploy.gate import scores

        return {s: {"balanced_accuracy": round(float(scores(y, self.fp32[s].argmax(1), self.num_classes,
                                                             self.rare_ids).balanced_accuracy), 4), "images": int(len(y))}
                for s, (_, y) in self.eval_sets.items()}

    def qat(self, model: Any, params: list, to_train: Callable, to_eval: Callable) -> dict[str, Any]:
        """The shared QAT-KD loop; ``to_train``/``to_eval`` put the library's model in the mode it needs
        (every library runs its forward passes without dropout)."""
        import torch

        from fopro_edge.deploy.qat import qat_kd_loss
        from fopro_edge.distill.losses import BalancedSoftmax

        a = self.args
        torch.manual_seed(a.seed)
        bsm = BalancedSoftmax(np.maximum(self.prior, 1e-12))
        teacher = self.student
        opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=a.lr)
        T, losses, times = a.temperature, [], []
        to_train(model)
        for step, (x, y) in enumerate(self.batches, 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                t_logits = teacher(x).float()
            s_logits = model(x).float()
            loss = qat_kd_loss(s_logits, t_logits, y, bsm, temperature=T, bsm_weight=a.bsm_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in params if p.requires_grad], 5.0)
            opt.step()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        to_eval(model)
        return {"steps": len(times), "trainable_params": int(sum(p.numel() for p in params if p.requires_grad)),
                "seconds_per_step": round(float(np.mean(times)), 4), "seconds_per_step_median": round(float(np.median(times)), 4),
                "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                "loss_mean_last_25": round(float(np.mean(losses[-25:])), 4)}

    def check_onnx(self, path: Path, torch_model: Any) -> dict[str, Any]:
        """ORT and OpenVINO on the exported QDQ file against the PyTorch fake-quant model, on the test split."""
        import onnx

        out: dict[str, Any] = {"file": path.name, "size_bytes": path.stat().st_size}
        m = onnx.load(str(path))
        ops = [n.op_type for n in m.graph.node]
        out.update(quantize_linear=ops.count("QuantizeLinear"), dequantize_linear=ops.count("DequantizeLinear"),
                   opset=max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None),
                   int8_initializers=sum(1 for i in m.graph.initializer if i.data_type in (2, 3)))
        x = self.eval_sets["test"][0]
        ref = self.logits(torch_model, x)
        try:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            fixed = sess.get_inputs()[0].shape[0]
            bs = fixed if isinstance(fixed, int) else 64
            got = np.concatenate([sess.run(None, {name: x[i:i + bs]})[0] for i in range(0, len(x), bs)])
            out["ort"] = {"runs": True, "max_abs_logit_diff_vs_torch_fakequant": round(float(np.abs(got - ref).max()), 5),
                          "mean_abs_logit_diff_vs_torch_fakequant": round(float(np.abs(got - ref).mean()), 5),
                          "argmax_agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4),
                          "argmax_disagreements": int((got.argmax(1) != ref.argmax(1)).sum()), "batch": bs}
            # the same file with every graph optimisation off: Q/DQ run as float maths, no int8 kernels
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            got = np.concatenate([sess.run(None, {name: x[i:i + bs]})[0] for i in range(0, len(x), bs)])
            out["ort_no_optimization"] = {"max_abs_logit_diff_vs_torch_fakequant": round(float(np.abs(got - ref).max()), 5),
                                          "mean_abs_logit_diff_vs_torch_fakequant": round(float(np.abs(got - ref).mean()), 5),
                                          "argmax_agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4)}
        except Exception as e:  # noqa: BLE001
            out["ort"] = {"runs": False, "error": _err(e)}
        try:
            import openvino as ov

            core = ov.Core()
            om = core.read_model(str(path))
            fq = sum(1 for op in om.get_ops() if op.get_type_name() == "FakeQuantize")
            cm = core.compile_model(om, "CPU", {"INFERENCE_NUM_THREADS": 1})
            if om.inputs[0].get_partial_shape()[0].is_static:
                bs = om.inputs[0].get_partial_shape()[0].get_length()
            else:
                bs = 64
            got = np.concatenate([cm(x[i:i + bs])[0] for i in range(0, len(x), bs)])
            out["openvino"] = {"reads": True, "runs": True, "fakequantize_ops_after_read": fq,
                               "max_abs_logit_diff_vs_torch_fakequant": round(float(np.abs(got - ref).max()), 5),
                               "mean_abs_logit_diff_vs_torch_fakequant": round(float(np.abs(got - ref).mean()), 5),
                               "argmax_agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4)}
        except Exception as e:  # noqa: BLE001
            out["openvino"] = {"reads": False, "error": _err(e)}
        return out


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().splitlines()
    return msg[0][:400] if msg else type(e).__name__


def _timed(fn: Callable, *a: Any, **k: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    r = fn(*a, **k)
    return r, time.perf_counter() - t0


def _eval_mode(m: Any) -> None:
    m.eval()


# -------------------------------------------------------------------------------------- libraries

def run_nncf(task: Task, tmp: Path) -> dict[str, Any]:
    """NNCF PyTorch backend, the project's own path (``fopro_edge.deploy.qat``), 8-bit weights."""
    from fopro_edge.deploy import qat

    out: dict[str, Any] = {}
    model, out["calibration_seconds"] = _timed(qat.fake_quantize, task.student, task.cal_images,
                                               preset="performance",
                                               seven_bit_weights=task.args.seven_bit_weights)
    model = model.cpu().eval()
    out["ptq"] = task.score(model)
    out["qat"] = task.qat(model, list(model.parameters()), _eval_mode, _eval_mode)
    out["after_qat"] = task.score(model)
    path = tmp / "nncf_qdq.onnx"
    try:
        qat.export_qdq_onnx(model, task.info, path, opset=17, dynamic_batch=True, batch_size=1)
        out["export"] = task.check_onnx(path, model)
    except Exception as e:  # noqa: BLE001
        out["export"] = {"error": _err(e)}
    return out


def run_pt2e(task: Task, tmp: Path) -> dict[str, Any]:
    """PyTorch 2 Export QAT from torchao: torch.export -> prepare_qat_pt2e -> QAT -> convert_pt2e."""
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    size = task.info.image_size
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.rand(2, 3, size, size),)
    gm = torch.export.export(copy.deepcopy(task.folded).eval(), example, dynamic_shapes=({0: batch},)).module()
    config = get_default_x86_inductor_quantization_config(is_qat=True)
    if task.args.seven_bit_weights:  # weight integers in [-64, 63]
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-64, quant_max=63))
    quantizer = X86InductorQuantizer().set_global(config)
    model = prepare_qat_pt2e(gm, quantizer)
    move_exported_model_to_eval(model)
    with torch.no_grad():
        model(torch.from_numpy(task.cal_images))  # one batch: min/max over every calibration image
    model.apply(_disable_observer)
    out["calibration_seconds"] = time.perf_counter() - t0
    out["ptq"] = task.score(model)
    out["qat"] = task.qat(model, list(model.parameters()), move_exported_model_to_eval, move_exported_model_to_eval)
    out["after_qat"] = task.score(model)
    try:
        converted = convert_pt2e(copy.deepcopy(model))
        move_exported_model_to_eval(converted)
        conv_logits = task.logits(converted, task.eval_sets["test"][0])
        out["converted_vs_fakequant_max_abs_diff"] = round(float(np.abs(conv_logits - task.logits(model, task.eval_sets["test"][0])).max()), 5)
        path = tmp / "pt2e_qdq.onnx"
        ep = torch.export.export(converted, example, dynamic_shapes=({0: batch},))
        torch.onnx.export(ep, example, str(path), dynamo=True, opset_version=17, input_names=["input"],
                          output_names=["logits"], external_data=False)
        out["export"] = task.check_onnx(path, model)
    except Exception as e:  # noqa: BLE001
        out["export"] = {"error": _err(e)}
    return out


def _disable_observer(mod: Any) -> None:
    if hasattr(mod, "disable_observer") and callable(mod.disable_observer):
        mod.disable_observer()


def run_modelopt(task: Task, tmp: Path) -> dict[str, Any]:
    """NVIDIA ModelOpt: mtq.quantize(INT8_DEFAULT_CFG) with a calibration loop, QAT, legacy ONNX export."""
    import modelopt.torch.quantization as mtq
    import torch

    from fopro_edge.deploy.onnx_backend import export_onnx
    from fopro_edge.deploy.qat import store_int8_weights

    out: dict[str, Any] = {}
    cal = [torch.from_numpy(task.cal_images[i:i + 16]) for i in range(0, len(task.cal_images), 16)]

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for b in cal:
                m(b)

    model, out["calibration_seconds"] = _timed(mtq.quantize, copy.deepcopy(task.folded).eval(),
                                               copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop)
    model.eval()
    if task.args.seven_bit_weights:  # twice the weight amax: integers in [-64, 64], still int8 in ONNX
        for name, q in model.named_modules():
            if name.endswith("weight_quantizer") and getattr(q, "amax", None) is not None:
                q.amax = q.amax * 2.0
    out["ptq"] = task.score(model)
    out["qat"] = task.qat(model, list(model.parameters()), _eval_mode, _eval_mode)
    out["after_qat"] = task.score(model)
    path = tmp / "modelopt_qdq.onnx"
    try:
        export_onnx(model, task.info, path, opset=17, dynamic_batch=True, batch_size=1)
        out["int8_weights_stored"] = store_int8_weights(path)
        out["export"] = task.check_onnx(path, model)
    except Exception as e:  # noqa: BLE001
        out["export"] = {"error": _err(e)}
    return out


LIBRARIES = {"nncf": ("NNCF (PyTorch QAT)", run_nncf, "nncf"),
             "pt2e": ("PyTorch PT2E QAT (torchao)", run_pt2e, "torchao"),
             "modelopt": ("NVIDIA ModelOpt", run_modelopt, "nvidia-modelopt")}


# ------------------------------------------------------------------------------------------ report

def machine() -> dict[str, Any]:
    flags, name = set(), platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and name in ("", platform.processor()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    versions = {}
    for p in ("torch", "torchvision", "timm", "nncf", "torchao", "nvidia-modelopt", "onnx", "onnxscript",
              "onnxruntime", "openvino", "numpy"):
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    import torch

    return {"cpu": name, "logical_cpus": os.cpu_count(), "avx2": "avx2" in flags, "avx512_vnni": "avx512_vnni" in flags,
            "avx_vnni": "avx_vnni" in flags, "amx_int8": "amx_int8" in flags, "amx_tile": "amx_tile" in flags,
            "torch_threads": torch.get_num_threads(), "torch_cuda_build": torch.version.cuda,
            "python": sys.version.split()[0], "versions": versions}


def _fmt(v: Any) -> str:
    return "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _mm(d: dict) -> str:
    return f"{d['max_abs_logit_diff_vs_torch_fakequant']:.3f} / {d['mean_abs_logit_diff_vs_torch_fakequant']:.3f}"


def render(result: dict[str, Any]) -> str:
    mc, a = result["machine"], result["settings"]
    L = [f"# QAT libraries for QAT-KD — {result['checkpoint']}", "",
         f"Machine: {mc['cpu']}, {mc['logical_cpus']} logical CPUs, torch threads {mc['torch_threads']}; "
         f"avx2 {mc['avx2']}, avx512_vnni {mc['avx512_vnni']}, avx_vnni {mc['avx_vnni']}, amx_int8 {mc['amx_int8']}, "
         f"amx_tile {mc['amx_tile']}; torch CUDA build {mc['torch_cuda_build']} (run on the CPU); Python {mc['python']}.", "",
         "Versions: " + ", ".join(f"{k} {v}" for k, v in mc["versions"].items()), "",
         f"Task: BatchNorm-folded student, {a['calibration_size']} calibration images, {a['steps']} QAT steps x "
         f"batch {a['batch_size']} ({a['sampler']} sampler, same batches for all), Adam lr {a['lr']}, KD T={a['temperature']} "
         f"+ {a['bsm_weight']} x Balanced Softmax, no early stop. Flips and rare right->wrong are against the FP32 student.", "",
         "FP32 student: " + ", ".join(f"{s} bal. acc {v['balanced_accuracy']:.4f} ({v['images']} images)"
                                       for s, v in result["fp32"].items()), "",
         "| library | stage | val bal. acc | val flips | val rare r→w | test bal. acc | test flips | test rare r→w |",
         "|---|---|---|---|---|---|---|---|"]
    for key, r in result["libraries"].items():
        if "error" in r:
            L.append(f"| {r['name']} | **not run** | {r['error']} |||||| ")
            continue
        for stage, label in (("ptq", "calibration only"), ("after_qat", f"after {r['qat']['steps']} QAT steps")):
            v, t = r[stage]["val"], r[stage]["test"]
            L.append(f"| {r['name']} | {label} | {v['balanced_accuracy']:.4f} | {v['flips']} | {v['rare_right_to_wrong']} | "
                     f"{t['balanced_accuracy']:.4f} | {t['flips']} | {t['rare_right_to_wrong']} |")
    L += ["", "| library | calibration s | s / QAT step | total s | trainable params | loss first → last | glue lines |",
          "|---|---|---|---|---|---|---|"]
    for key, r in result["libraries"].items():
        if "error" in r:
            continue
        q = r["qat"]
        L.append(f"| {r['name']} | {r['calibration_seconds']:.1f} | {q['seconds_per_step']:.3f} | {r['total_seconds']:.1f} | "
                 f"{q['trainable_params']} | {q['loss_first']:.3f} → {q['loss_last']:.3f} | {r['glue_lines']} |")
    L += ["", "| library | QDQ ONNX | Q / DQ nodes | int8 inits | size KiB | ORT runs | ORT max / mean abs Δ logit vs torch | "
          "ORT argmax agree | ORT no-opt max / mean abs Δ | OpenVINO reads+runs | OV max / mean abs Δ vs torch | OV argmax agree |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in result["libraries"].items():
        if "error" in r:
            continue
        e = r.get("export", {})
        if "error" in e:
            L.append(f"| {r['name']} | **failed**: {e['error']} |||||||||")
            continue
        o, v, n = e.get("ort", {}), e.get("openvino", {}), e.get("ort_no_optimization", {})
        L.append(f"| {r['name']} | yes (opset {e['opset']}) | {e['quantize_linear']} / {e['dequantize_linear']} | "
                 f"{e['int8_initializers']} | {e['size_bytes'] / 1024:.0f} | {o.get('runs')} | "
                 f"{_mm(o) if o.get('runs') else o.get('error')} | {_fmt(o.get('argmax_agreement'))} | {_mm(n) if n else '—'} | "
                 f"{v.get('runs', False)} | {_mm(v) if v.get('runs') else v.get('error')} | "
                 f"{_fmt(v.get('argmax_agreement'))} |")
    L += ["", "Notes:", *[f"- {n}" for n in result["notes"]], ""]
    return "\n".join(L)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a trained student, e.g. RUN/checkpoints/best.pt of a demo run")
    p.add_argument("--out", default="benchmarks/results/qat_libraries_demo")
    p.add_argument("--libraries", default="nncf,pt2e,modelopt")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--bsm-weight", type=float, default=0.5)
    p.add_argument("--sampler", default="sqrt", choices=["instance", "balanced", "sqrt"])
    p.add_argument("--calibration-size", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weight-bits", default="8,7",
                   help="weight integer widths to run, comma-separated: 8 and/or 7 (7: what the project uses on AVX2-only CPUs)")
    p.add_argument("--note", action="append", default=[], help="an extra line for the report's notes (repeatable)")
    p.add_argument("--render-from", default=None,
                   help="re-render <out>.md (and add --note lines to <out>.json) from an earlier run's JSON, running nothing")
    args = p.parse_args()
    if args.render_from:
        result = json.loads(Path(args.render_from).read_text())
        result["notes"] += [n for n in args.note if n not in result["notes"]]
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        out.with_suffix(".md").write_text(render(result))
        print(render(result))
        return

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    task = Task(args)
    result: dict[str, Any] = {"checkpoint": str(args.checkpoint), "settings": vars(args), "machine": machine(),
                              "setup_seconds": round(time.perf_counter() - t0, 1), "fp32": task.fp32_scores(),
                              "libraries": {}, "notes": []}
    with tempfile.TemporaryDirectory() as d:
      for bits in [int(b) for b in args.weight_bits.split(",") if b.strip()]:
        if bits not in (7, 8):
            raise SystemExit("--weight-bits: 7 or 8")
        args.seven_bit_weights = bits == 7
        for lib in [k.strip() for k in args.libraries.split(",") if k.strip()]:
            name, fn, dist = LIBRARIES[lib]
            key, name = f"{lib}@{bits}bit", f"{name}, {bits}-bit w"
            print(f"== {name}", flush=True)
            torch.manual_seed(args.seed)
            t = time.perf_counter()
            try:
                work = Path(d) / key.replace("@", "_")
                work.mkdir()
                r = fn(task, work)
                r["total_seconds"] = round(time.perf_counter() - t, 1)
                r["calibration_seconds"] = round(r["calibration_seconds"], 1)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                r = {"error": _err(e), "seconds_until_error": round(time.perf_counter() - t, 1)}
            r["name"], r["library"], r["weight_bits"] = name, lib, bits
            r["glue_lines"] = len(inspect.getsource(fn).splitlines())
            result["libraries"][key] = r
            print(json.dumps(r, indent=1, default=str), flush=True)
    for key, r in result["libraries"].items():
        if "converted_vs_fakequant_max_abs_diff" in r:
            result["notes"].append(f"{r['name']}: convert_pt2e's model vs the prepared (fake-quant) model, test split: "
                                   f"max |logit diff| {r['converted_vs_fakequant_max_abs_diff']}; the ONNX file is exported "
                                   "from the converted model.")
    result["notes"] += [
        "8-bit w: int8 weights in [-128, 127]. 7-bit w: weight integers in [-64, 64] (NNCF and ModelOpt: twice the "
        "calibrated weight scale/amax, the project's NNCF trick; PT2E: quant_min/max -64/63 in the weight spec), stored "
        "as int8 in ONNX. On an AVX2-only CPU the project uses 7-bit weights (u8s8 saturation in x86 int8 kernels), so "
        "ORT/OpenVINO results of 8-bit weights on AVX2 can differ from the fake-quant model. The 'ORT no-opt' column runs "
        "the same file with every graph optimisation off (Q/DQ as float maths), to separate export errors from kernel effects.",
        "Export checks (ORT, OpenVINO) are on the test split, against the library's own PyTorch fake-quant model after QAT.",
        "Activation schemes differ by library default: NNCF symmetric (unsigned after ReLU), PT2E X86InductorQuantizer "
        "asymmetric uint8, ModelOpt symmetric int8 on Conv/Linear inputs only.",
        "Glue lines = lines of this script's run_<library> function (the shared loop/scoring/export checks not counted).",
        "NNCF's calibration time includes loading its C++ fake-quantize extension; it is built on first use and cached "
        "(a first build on a 2-core machine takes about a minute and a half).",
        *args.note,
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
