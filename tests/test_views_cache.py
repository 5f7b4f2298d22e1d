"""Training views at two resolutions, the prompt where the teacher looks, and the teacher-feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fopro_edge.config import load_recipe
from fopro_edge.data import ImageList
from fopro_edge.data.views import FixedViews, ViewRenderer, ViewSpec, resize
from fopro_edge.distill import teacher_cache
from fopro_edge.distill.rundir import RunDir, prepare_run_dir
from fopro_edge.distill.runtime import Runtime
from fopro_edge.distill.trainer import Trainer, distill
from fopro_edge.models import build_teacher
from fopro_edge.config import TeacherConfig

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke_synthetic.yaml"
CPU = Runtime(torch.device("cpu"))


def _images(n: int = 6, size: int = 20, seed: int = 0) -> ImageList:
    rng = np.random.default_rng(seed)
    return ImageList(rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), np.arange(n) % 3, ("a", "b", "c"))


def test_downscale_is_antialiased():
    n = 64  # a one-pixel checkerboard: downscaled without antialiasing it aliases into stripes
    board = ((torch.arange(n)[:, None] + torch.arange(n)[None, :]) % 2).float().expand(3, n, n)
    small = resize(board, 24)
    assert small.shape == (3, 24, 24)
    assert float(small.std()) < 0.01 and abs(float(small.mean()) - 0.5) < 0.01  # plain bilinear: std 0.15


def test_the_teachers_view_is_rendered_from_the_source_not_upsampled_from_the_students():
    images = _images(size=40)
    spec = ViewSpec(student_size=16, teacher_size=48, augment="light", flips=True)
    student, teacher = ViewRenderer(spec).seeded(images.load(0), seed=3)
    assert student.shape == (3, 16, 16) and teacher.shape == (3, 48, 48)
    # one augmentation: the student's view is the teacher's, downscaled
    torch.testing.assert_close(student, resize(teacher, 16), atol=1e-6, rtol=0)
    # and the teacher's holds detail the student's tensor cannot give back
    assert float((teacher - resize(student, 48)).abs().mean()) > 0.02


def test_fixed_views_are_the_same_in_every_run_and_leave_the_callers_random_streams_alone():
    images = _images()
    spec = ViewSpec(16, 24, "light", True)
    a, b = FixedViews(images, spec, views=3, seed=7), FixedViews(images, spec, views=3, seed=7)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    first = a.render_view(2, 1)
    assert torch.equal(torch.rand(1), before)  # rendering did not consume the training's stream
    torch.testing.assert_close(first, b.render_view(2, 1), rtol=0, atol=0)
    assert not torch.equal(a.render_view(2, 0)[0], first[0])  # another view, another augmentation
    a.choose(seed=0, epoch=0)
    seen = np.stack([(a.choose(0, e), a.choice.copy())[1] for e in range(3)])
    assert all(sorted(seen[:, i]) == [0, 1, 2] for i in range(len(images)))  # every view once per K epochs


def _plan(tmp_path, teacher, images, prompt=None, **kw):
    spec = ViewSpec(16, teacher.image_size, "light", True)
    return teacher_cache.CachePlan(tmp_path, images, spec, kw.pop("views", 2), kw.pop("view_seed", 0), True, teacher,
                                   prompt, batch_size=4, **kw)


def test_cached_features_equal_the_live_teacher_on_the_same_view(tmp_path):
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(model="test_efficientnet", image_size=32))
    images = _images()
    plan = _plan(tmp_path, teacher, images)
    entry = teacher_cache.ensure(plan, CPU)
    assert entry.built == ["views", "features"] and entry.features.dtype == torch.float16
    assert entry.features.shape[:2] == (len(images), 2) and entry.views.shape == (len(images), 2, 3, 16, 16)
    views = FixedViews(images, plan.spec, 2, 0)
    for i, k in ((0, 0), (3, 1), (5, 1)):
        student, teacher_view = views.render_view(i, k)
        with torch.no_grad():
            live = teacher(teacher_view[None])[0]
        torch.testing.assert_close(entry.features[i, k].float(), live, atol=2e-3 * float(live.abs().max()) + 1e-3, rtol=1e-2)
        torch.testing.assert_close(entry.views[i, k].float() / 255, student, atol=0.5 / 255 + 1e-6, rtol=0)


def test_the_cache_is_reused_and_anything_that_changes_the_features_rebuilds_it(tmp_path):
    from fopro_edge.prompt import FourierPromptGenerator

    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(model="test_efficientnet", image_size=32))
    images = _images()
    assert teacher_cache.ensure(_plan(tmp_path, teacher, images), CPU).built == ["views", "features"]
    assert teacher_cache.ensure(_plan(tmp_path, teacher, images), CPU).built == []  # another run: reused
    other = build_teacher(TeacherConfig(model="test_efficientnet", image_size=32))  # other weights (random init)
    assert teacher_cache.ensure(_plan(tmp_path, other, images), CPU).built == ["features"]
    assert teacher_cache.ensure(_plan(tmp_path, teacher, _images(seed=1)), CPU).built == ["views", "features"]  # other data
    prompt = FourierPromptGenerator(32, conditional=False).randomise_(0.2, torch.Generator().manual_seed(0))
    prompted = teacher_cache.ensure(_plan(tmp_path, teacher, images, prompt), CPU)
    assert prompted.built == ["features"]
    assert teacher_cache.ensure(_plan(tmp_path, teacher, images, view_seed=1), CPU).built == ["views", "features"]
    # an entry whose recorded key does not match what it is filed under is rebuilt, never used
    entry = teacher_cache.ensure(_plan(tmp_path, teacher, images), CPU)
    meta = entry.feature_dir / "meta.json"
    broken = json.loads(meta.read_text()) | {"key": {"format": -1}}
    meta.write_text(json.dumps(broken))
    assert teacher_cache.ensure(_plan(tmp_path, teacher, images), CPU).built == ["features"]


def _trainer(tmp_path, *overrides) -> Trainer:
    recipe = load_recipe(SMOKE, ["distill.teacher_cache.mode=on", f"distill.teacher_cache.dir={tmp_path / 'cache'}",
                                 "distill.teacher_cache.views=2", *overrides])
    return Trainer(recipe, RunDir(tmp_path / "run"), CPU, progress=False)


def test_a_recipe_without_teacher_size_gets_the_teachers_own_and_records_it(tmp_path):
    recipe = load_recipe(SMOKE, ["teacher.image_size=null", "distill.method=ekd", "distill.epochs=1",
                                 "distill.teacher_cache.mode=off"])
    assert recipe.teacher.image_size is None and recipe.data.image_size == 32
    result = distill(recipe, prepare_run_dir(tmp_path / "run", recipe.name, resume=False), progress=False)
    saved = load_recipe(result.run_dir / "recipe.yaml", check_paths=False)
    assert saved.teacher.image_size == 160  # test_efficientnet's own input size
    views = json.loads((result.run_dir / "metrics" / "metrics.json").read_text())["views"]
    assert views["student_size"] == 32 and views["teacher_size"] == 160


def test_the_prompt_acts_on_the_teachers_view_after_the_resize(tmp_path):
    tr = _trainer(tmp_path, "distill.method=fopro", "distill.akd.start_epoch=0", "distill.akd.every=1",
                  "distill.teacher_cache.mode=off")
    assert tr.prompt.size == (48, 48) and tr.recipe.data.image_size == 32
    seen = []
    forward = tr.prompt.forward_with_log_gain
    tr.prompt.forward_with_log_gain = lambda x: (seen.append(tuple(x.shape[-2:])), forward(x))[1]
    tr._start_epoch(0)
    tr.objective.set_epoch(0)
    batch = next(iter(tr.loader))
    assert batch["student"].shape[-2:] == (32, 32) and batch["teacher"].shape[-2:] == (48, 48)
    tr.train_step(batch, 0)
    assert seen and set(seen) == {(48, 48)}


def test_with_the_cache_the_teacher_is_not_run_in_training_and_every_method_sees_the_same_views(tmp_path):
    ekd = _trainer(tmp_path, "distill.method=ekd")
    ekd._use_fixed_views()
    calls = []
    ekd.teacher.register_forward_hook(lambda *a: calls.append(1))
    ekd._start_epoch(1)
    batch = next(iter(ekd.loader))
    assert "teacher_features" in batch and "teacher" not in batch
    ekd.train_step(batch, 0)
    assert calls == []
    bsm = _trainer(tmp_path, "distill.method=bsm")
    bsm._use_fixed_views()
    assert bsm.cache_info["built"] == [] and bsm.cache_info["teacher"] == "none"  # views reused, no teacher
    bsm._start_epoch(1)
    np.testing.assert_array_equal(bsm.train_set.choice, ekd.train_set.choice)
    i = int(batch["index"][0])
    torch.testing.assert_close(bsm.train_set[i]["student"], ekd.train_set[i]["student"], rtol=0, atol=0)


def test_the_random_prompt_control_is_fixed_and_grey_images_get_one_gain(tmp_path):
    tr = _trainer(tmp_path, "distill.method=ekd+randfpg", "prompt.random_log_gain=0.3")
    assert tr.probe is None and not any(p.requires_grad for p in tr.prompt.parameters())
    assert tr.prompt.size == (48, 48)
    before = tr.prompt.prompt.clone()
    tr._use_fixed_views()
    assert tr.cache_info["teacher"] == "cached features"  # a fixed prompt: its features are cached too
    tr._start_epoch(0)
    tr.train_step(next(iter(tr.loader)), 0)
    assert torch.equal(tr.prompt.prompt, before)
