"""Consistency distillation end to end: a tiny trained teacher tuned (ECT) or distilled into a consistency student.

The student package loads through ``ebru.load`` (its licence chain names the teacher), samples with the
multistep consistency sampler on its own grid by default (any other step count too), resumes bit for bit
after an interruption (the stage of ECT's schedule included), and every bad input is refused in one line
before any training.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file

from ebru.diffusion import SAMPLERS, Precond, get_sigmas
from ebru.diffusion.consistency import ConsistencyDenoiser, cd_loss, consistency_scalings, ect_r
from ebru.diffusion.distill import GUIDANCE_FEATURES, GridSchedule, GuidanceInput, PerSampleGuidance
from ebru.nets import build_net
from ebru.pipelines import ImagePipeline
from ebru.pipelines.distill import distill
from ebru.tasks.consistency import ConsistencyDistillTask, consistency_grid
from ebru.train import Trainer, load_config
from ebru.train import trainer as trainer_module
from ebru.trust import load

from .test_distill import FAST, one_error, other_package, run, train_teacher

ECT = ["distill.stage_images=8"]  # a new stage every step at batch 8: the schedule moves within a test


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE", "EBRU_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An unconditional teacher: consistency tuning (ECT)."""
    return train_teacher(tmp_path_factory.mktemp("cm-teacher"), "class_conditional=false")


@pytest.fixture(scope="module")
def guided(tmp_path_factory):
    """A class-conditional teacher (guidance 2): consistency distillation of the guided teacher."""
    return train_teacher(tmp_path_factory.mktemp("cm-guided"))


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("cm-student") / "d"
    return distill(teacher, method="consistency", steps=2, out=out, steps_per_round=3, overrides=FAST + ECT,
                   device="cpu", progress=False)


def network_calls(pipe):
    calls = []
    inner = pipe.denoiser.denoiser if isinstance(pipe.denoiser, GuidanceInput) else pipe.denoiser
    inner.denoiser.net.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    return calls


# ------------------------------------------------------------------------------------------- the student
def test_the_student_is_a_package_made_for_two_consistency_steps(teacher, student):
    assert sorted(p.name for p in student.parent.glob("round-*")) == ["round-1-consistency"]
    plan = json.loads((student.parent / "distill.json").read_text(encoding="utf-8"))
    assert (plan["method"], plan["steps"], plan["rounds"]) == ("consistency", 2, ["round-1-consistency"])
    m, t = load(student, quiet=True), load(teacher, quiet=True)
    d, s = m.config["distilled"], m.config["sampling"]
    assert (d["method"], d["steps"], d["sampler"], d["loss"], d["any_steps"]) == ("consistency", 2, "consistency",
                                                                                   "ect", True)
    assert d["sigmas"] == [80.0, 0.821, 0.0]  # ECT's two steps
    assert d["consistency"] == {"sigma_min": 0.002, "sigma_data": 0.5}
    assert (s["sampler"], s["steps"], s["sigma_min"], s["sigma_max"]) == ("consistency", 2, 0.821, 80.0)
    # three steps of 8 images, a stage per 8 images: the last batch was trained at stage 2
    assert d["settings"]["q"] == 2.0 and d["settings"]["stage_images"] == 8 and d["final_stage"] == 2
    assert d["settings"]["huber_c"] == pytest.approx(0.00054 * 8)  # iCT's c for 1x8x8 images
    assert m.config["net"] == t.config["net"] and "guidance_input" not in d
    # the licence chain: the card's base_model is the teacher, whose signed lineage entry carries its licence
    name = d["teacher"]["name"]
    assert d["teacher"]["manifest_sha256"] == t.manifest_sha256 and d["teacher"]["steps"] == 4
    assert m.card.base_model == (name,) and m.card.license == "apache-2.0"
    assert m.lineage[0]["name"] == name and m.lineage[0]["manifest_sha256"] == t.manifest_sha256
    assert m.manifest.provenance["created_by"] == "ebru distill"
    assert "consistency tuning (ECT" in m.read("MODEL_CARD.md").decode("utf-8")
    assert (student.parent / "round-1-consistency" / "samples" / "step-0000003.png").is_file()  # the preview


def test_the_student_samples_its_own_grid_with_the_consistency_sampler_one_call_per_step(student):
    pipe = ImagePipeline.from_pretrained(student, watermark=False)
    setting = pipe.sampling()
    assert (setting["sampler"], setting["steps"]) == ("consistency", 2)
    assert isinstance(setting["schedule"], GridSchedule) and setting["schedule"].sigmas.tolist() == [80.0, 0.821, 0.0]
    calls = network_calls(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own defaults: no warning
        images = pipe(2, seeds=[5, 6])
    assert calls == [2, 2]
    # built independently: ECT's parameterisation around the package's network, EDM's c_in and c_noise kept
    net = build_net(pipe.config["net"])
    net.load_state_dict(load_file(str(student / "model.safetensors")))
    net.eval()

    def f(x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip, c_out = consistency_scalings(s, 0.002, 0.5)
        return c_skip * x + c_out * net(x / (s**2 + 0.25).sqrt(), sigma.log() / 4)

    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    noise = torch.stack([torch.randn(1, 8, 8, generator=g) for g in gens])
    with torch.no_grad():
        want = SAMPLERS["consistency"](f, noise * 80.0, torch.tensor([80.0, 0.821, 0.0], dtype=torch.float64),
                                       generator=gens)
    torch.testing.assert_close(images, want, rtol=1e-5, atol=1e-5)


def test_the_student_samples_any_step_count_and_warns_only_for_another_sampler(student):
    pipe = ImagePipeline.from_pretrained(student, watermark=False)
    for k in (1, 4):
        setting = pipe.sampling(num_inference_steps=k)
        torch.testing.assert_close(get_sigmas(setting["schedule"], k, setting["sigma_min"], setting["sigma_max"]),
                                   consistency_grid(k, 80.0, 0.821), rtol=1e-12, atol=0)  # the grid's family
        calls = network_calls(pipe) if k == 4 else []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert pipe(2, num_inference_steps=k).shape == (2, 1, 8, 8)
        assert k != 4 or calls == [2] * 4
    with pytest.warns(UserWarning, match=r"distilled \(consistency\) for 2 consistency steps.*sampler euler") as rec:
        pipe(1, sampler="euler")
    assert len(rec) == 1 and "\n" not in str(rec[0].message)


def test_cli_distills_and_ebru_sample_uses_the_students_defaults(teacher, tmp_path, capsys):
    out = tmp_path / "d"
    code, stdout, err = run(capsys, "distill", teacher, "--method", "consistency", "--steps", "1", "--out", out,
                            "--steps-per-round", "2", "--set", "batch_size=8", "--set", "device=cpu")
    assert code == 0, err
    assert f"student: {out / 'model'}" in stdout
    m = load(out / "model", quiet=True)
    assert (m.config["distilled"]["steps"], m.config["distilled"]["sigmas"]) == (1, [80.0, 0.0])
    code, _, err = run(capsys, "sample", out / "model", "-n", "2", "--out-dir", tmp_path / "png")
    assert code == 0, err
    assert "distilled" not in err and len(list((tmp_path / "png").glob("*.png"))) == 2
    code, stdout, _ = run(capsys, "samplers")
    assert re.search(r"^consistency\s+n\s+-\s+yes$", stdout, re.M)


def test_an_interrupted_tuning_resumes_to_the_same_student(teacher, tmp_path, monkeypatch, capsys):
    """Every step is a new stage (stage_images = batch): the resumed run continues at the stage it stopped in."""
    stages = []
    real_levels = ConsistencyDistillTask.draw_levels

    def recorded(self, batch_size, generator):
        stages.append(self.stage)
        return real_levels(self, batch_size, generator)

    monkeypatch.setattr(ConsistencyDistillTask, "draw_levels", recorded)
    whole = distill(teacher, method="consistency", steps=2, out=tmp_path / "whole", steps_per_round=4,
                    overrides=FAST + ECT, device="cpu", progress=False)
    assert stages == [0, 1, 2, 3]
    stages.clear()
    real_step = Trainer.train_step

    def interrupted(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, method="consistency", steps=2, out=tmp_path / "cut", steps_per_round=4,
                overrides=FAST + ECT, device="cpu", progress=False)
    assert not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    code, out, err = run(capsys, "distill", teacher, "--method", "consistency", "--steps", "2", "--out",
                         tmp_path / "cut", "--resume", "--steps-per-round", "4",
                         *(a for s in FAST + ECT for a in ("--set", s)), "--set", "device=cpu")
    assert code == 0, err
    assert "resumed from step 2" in out
    assert stages == [0, 1, 2, 3]  # steps 1, 2 before the interruption; 3, 4 after it, at their own stages
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load(tmp_path / "cut" / "model", quiet=True).config["distilled"]["final_stage"] == 3
    code, _, err = run(capsys, "distill", teacher, "--method", "progressive", "--steps", "2", "--out",
                       tmp_path / "cut", "--resume")
    assert code == 2 and re.search(r"another method \('consistency', now 'progressive'\)", err), err


# ------------------------------------------------------------------------------------------- the task
def consistency_task(teacher, **table):
    cfg = load_config(None, ["task=\"consistency_distill\"", "device=\"cpu\"",
                             f"data={json.dumps(load(teacher, quiet=True).config['training']['config']['data'])}"])
    cfg.distill = {"teacher": str(teacher), "quiet": True, "allow_unsigned": True, **table}
    return ConsistencyDistillTask(cfg, torch.device("cpu"))


def test_ect_needs_no_teacher_and_its_draws_follow_the_stage(teacher):
    task = consistency_task(teacher, stage_images=100)
    assert task.teacher is None
    net, f = task.build()
    assert isinstance(f, ConsistencyDenoiser) and isinstance(f.denoiser, Precond) and f.denoiser.net is net
    for seen, stage in ((0, 0), (99, 0), (100, 1), (750, 7), (10**6, 7)):
        task.set_progress(0, seen)
        batch = task.draw(512, torch.Generator().manual_seed(0))
        assert task.stage == stage
        t = batch["t"].double()
        assert float(t.min()) >= 0.002 and float(t.max()) <= 80.0
        torch.testing.assert_close(batch["r"], ect_r(t, stage).float(), rtol=0, atol=0)


def test_a_guided_teacher_is_distilled_with_the_scale_as_the_students_input(guided):
    task = consistency_task(guided)
    g = task.guidance
    assert (g.mode, g.range, g.default, g.teacher_guided) == ("input", (1.0, 4.0), 2.0, True)
    assert isinstance(task.teacher, PerSampleGuidance) and task.net_config["pooled_dim"] == GUIDANCE_FEATURES
    torch.manual_seed(0)
    _, f = task.build()
    assert isinstance(f, GuidanceInput) and isinstance(f.denoiser, ConsistencyDenoiser)
    # the student starts as the teacher's (unguided) denoiser up to O(sigma_min / sigma), whatever the scale ...
    x, y = 80.0 * torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 0])
    plain = task.teacher.denoiser(x, 80.0, class_labels=y)
    for w in (1.0, 3.0):
        with torch.no_grad():
            out = f(x, 80.0, class_labels=y, guidance=torch.full((3,), w))
        assert float((out - plain).abs().max()) <= 1e-4 * float((x - plain).abs().max())
        assert torch.equal(f(x, 0.002, class_labels=y, guidance=w), x)  # ... and is the identity at sigma_min
    # the loss is consistency distillation's: the guided teacher's Euler step, the scale to both networks
    batch = task.draw(4, torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    got = task.loss(f, batch, slice(0, 4))
    x0, noise, cond = task.inputs(batch, slice(0, 4))
    assert set(cond) == {"class_labels", "guidance"}
    torch.manual_seed(3)
    want = cd_loss(f, task.teacher, x0, noise, batch["t"], batch["r"], huber_c=task.huber_c, cond=cond)
    assert torch.equal(got, want) and bool((got > 0).all())


def test_a_guided_student_samples_one_call_per_step_reading_the_scale(guided, tmp_path):
    model = distill(guided, method="consistency", steps=2, out=tmp_path / "d", steps_per_round=2, overrides=FAST,
                    device="cpu", progress=False)
    m = load(model, quiet=True)
    d = m.config["distilled"]
    assert (d["loss"], d["guidance_input"]["range"], m.config["sampling"]["guidance"]) == ("cd", [1.0, 4.0], 2.0)
    assert "consistency distillation (Song et al. 2023)" in m.read("MODEL_CARD.md").decode("utf-8")
    pipe = ImagePipeline.from_pretrained(model, watermark=False)
    calls = network_calls(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(2, class_labels=[0, 1], guidance_scale=3.0)
    assert calls == [2, 2]  # no classifier-free guidance on top: one conditional call per step


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("argv", "message"), [
    (["--teacher-steps", "4"], r"teacher steps are for progressive distillation; .* drop --teacher-steps"),
    (["--set", "distill.q=1"], r"distill.q must be > 1"),
    (["--set", "distill.qq=2"], r"unknown distill key 'qq' \(did you mean 'q'\?\)"),
    (["--set", "distill.last_sigma=100"], r"distill.last_sigma must be between the teacher's sigma_min and "
                                          r"sigma_max \(0.002, 80\), got 100"),
    (["--set", "distill.stages=0"], r"distill.stages must be a positive integer, got 0"),
    (["--set", "distill.huber_c=-1"], r"distill.huber_c must be > 0"),
    (["--time-budget", "0.0001"], r"time budget of 0.0001 min is too small for one round: 1 round\(s\)"),
    (["--guidance", "3"], r"guidance is for class-conditional teachers, and this one has no classes"),
    (["--steps", "0"], r"--steps: must be a positive integer"),
])
def test_bad_settings_are_refused_in_one_line(teacher, tmp_path, capsys, argv, message):
    args = ["distill", teacher, "--method", "consistency", "--out", tmp_path / "d", "--set", "device=cpu"]
    if "--steps" not in argv:
        args += ["--steps", "2"]
    code, _, err = run(capsys, *args, *argv)
    assert code == 2 and re.search(message, err), err
    assert one_error(err)
    assert not (tmp_path / "d" / "distill.json").exists()


def test_a_weighting_is_refused_for_consistency(teacher, tmp_path):
    with pytest.raises(ValueError, match=r"a weighting \('edm'\) is for progressive distillation"):
        distill(teacher, method="consistency", steps=1, out=tmp_path / "d", weighting="edm", progress=False)


@pytest.mark.parametrize("method", ["progressive", "consistency"])
def test_a_consistency_student_is_no_teacher(student, tmp_path, capsys, method):
    code, _, err = run(capsys, "distill", student, "--method", method, "--steps", "1", "--out", tmp_path / "d",
                       "--allow-unsigned")
    assert code == 2 and re.search(r"a consistency student \(a consistency function, not a denoiser\) cannot be "
                                   r"a teacher", err), err
    assert one_error(err)


def test_a_progressive_student_is_no_consistency_teacher(teacher, tmp_path, capsys):
    mid = distill(teacher, steps=2, out=tmp_path / "p", steps_per_round=1, overrides=FAST, device="cpu",
                  progress=False)
    code, _, err = run(capsys, "distill", mid, "--method", "consistency", "--steps", "1", "--out", tmp_path / "d",
                       "--allow-unsigned")
    assert code == 2 and re.search(r"a progressive student; consistency distillation starts from a diffusion model",
                                   err), err
    assert one_error(err)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: other_package(p, {"kind": "text-diffusion"}),
     r"config.json: a 'text-diffusion' model; ebru distill makes few-step students of ebru image-diffusion models"),
    (lambda p: other_package(p, {"kind": "image-diffusion", "image_shape": [1, 8, 8]}, "cc-by-nc-4.0"),
     r"MODEL_CARD.md: licence 'cc-by-nc-4.0' is denied by the licence policy"),
])
def test_a_teacher_that_cannot_be_distilled_is_refused_in_one_line(tmp_path, capsys, make, message):
    make(tmp_path / "t")
    code, _, err = run(capsys, "distill", tmp_path / "t", "--method", "consistency", "--steps", "2", "--out",
                       tmp_path / "d")
    assert code == 2 and re.search(message, err), err
    assert one_error(err) and not (tmp_path / "d").exists()
