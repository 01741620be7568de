"""Distilling a text-to-image teacher: a tiny captioned teacher made a consistency and a progressive student.

The student reads the guidance scale through a second pooled input of its network (``guidance_dim``; the
first carries the sentence vector), starts as exactly the teacher, samples with one network call per step
and no classifier-free guidance on top, keeps the teacher's encoder, licence and prompts, resumes bit for
bit after an interruption, and every refusal is one line.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from safetensors.torch import load_file

from ebru.diffusion import SAMPLERS, Precond
from ebru.diffusion.distill import GUIDANCE_FEATURES, GridSchedule, GuidanceInput, PerSampleGuidance, guidance_features
from ebru.nets import build_net
from ebru.nets.layers import conditioning
from ebru.pipelines import TextToImagePipeline
from ebru.pipelines.distill import distill
from ebru.tasks.consistency import ConsistencyDistillTask
from ebru.tasks.distill import ProgressiveDistillTask
from ebru.tasks.text2image import text_condition
from ebru.train import Trainer, load_config
from ebru.train import trainer as trainer_module
from ebru.trust import load

from .test_distill import one_error, run
from .test_text2image import tiny_captioned, tiny_config

FAST = ["batch_size=8", "log_every=1", "checkpoint_every=1"]
PROMPTS = ["a red square", "a blue square"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE", "EBRU_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A text-to-image teacher trained 4 steps on red and blue squares; it samples 4 euler steps at guidance 2."""
    out = tmp_path_factory.mktemp("t2i-teacher")
    cfg = tiny_config(sample_steps=4, sample_sampler="euler", sample_guidance=2.0, license="apache-2.0")
    return Trainer(cfg, out / "run", dataset=tiny_captioned(), progress=False).fit()


def make(teacher, out, method, steps, **kw):
    kw = {"steps_per_round": 2, **kw}
    kw.setdefault("data", tiny_captioned())
    return distill(teacher, method=method, steps=steps, out=out, overrides=FAST, device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def cm(teacher, tmp_path_factory):
    """Consistency distillation of the guided teacher: a 2-step student, the scale its input."""
    return make(teacher, tmp_path_factory.mktemp("t2i-cm") / "d", "consistency", 2)


@pytest.fixture(scope="module")
def pd(teacher, tmp_path_factory):
    """Progressive distillation 4 -> 2 -> 1 of the guided teacher, the scale its input."""
    return make(teacher, tmp_path_factory.mktemp("t2i-pd") / "d", "progressive", 1)


def task_of(cls, teacher, **table):
    cfg = load_config(None, [f"task=\"{cls.name}\"", "device=\"cpu\"", "data=\"unused\"", "cond_dropout=0.3"])
    cfg.distill = {"teacher": str(teacher), "quiet": True, "allow_unsigned": True, **table}
    return cls(cfg, torch.device("cpu"), data=tiny_captioned())


def network_calls(pipe):
    """Count the network's forward calls (and the batch each sees)."""
    calls = []
    d = pipe.denoiser
    while not isinstance(d, Precond):
        d = d.denoiser
    d.net.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    return calls


# ------------------------------------------------------------------------------------------- the network
def test_a_guidance_input_is_a_second_pooled_input_that_starts_at_zero():
    net = build_net({"kind": "unet", "channels": 8, "channel_mult": [1], "num_res_blocks": 1,
                     "attention_resolutions": [], "num_heads": 1, "image_size": 8, "pooled_dim": 4,
                     "guidance_dim": GUIDANCE_FEATURES}).eval()
    x, c, pooled = torch.randn(2, 1, 8, 8), torch.tensor([0.1, -0.3]), torch.randn(2, 4)
    g = guidance_features(torch.tensor([1.0, 3.0]))
    plain, _, _ = conditioning(net, x, c, None, None, None, pooled)
    with_g, _, _ = conditioning(net, x, c, None, None, None, pooled, g)
    assert torch.equal(with_g, plain)  # its last layer starts at zero: the network is the one without it
    torch.nn.init.normal_(net.guidance_embed.mlp[2].weight)
    with_g, _, _ = conditioning(net, x, c, None, None, None, pooled, g)
    torch.testing.assert_close(with_g, plain + net.guidance_embed(g, 2))  # added to the noise embedding
    bare = build_net({"kind": "dit", "image_size": 8, "hidden": 16, "depth": 1, "num_heads": 2, "pooled_dim": 4})
    with pytest.raises(ValueError, match=r"guidance_features were given, but this model has no guidance input"):
        bare(x, c, encoder_pooled=pooled, guidance_features=g)
    dit = build_net({"kind": "dit", "image_size": 8, "hidden": 16, "depth": 1, "num_heads": 2, "guidance_dim": 16})
    assert torch.equal(dit.guidance_embed.mlp[2].weight, torch.zeros(16, 16))


# ------------------------------------------------------------------------------------------- the task
@pytest.mark.parametrize("cls", [ProgressiveDistillTask, ConsistencyDistillTask])
def test_the_student_starts_as_the_teacher_and_learns_the_guided_teacher(teacher, cls):
    task = task_of(cls, teacher)
    g = task.guidance
    assert (g.mode, g.range, g.default, g.input, g.teacher_guided) == (
        "input", (1.0, 4.0), 2.0, "guidance_features", True)
    assert task.net_config == {**load(teacher, quiet=True).config["net"], "guidance_dim": GUIDANCE_FEATURES}
    assert isinstance(task.teacher, PerSampleGuidance)
    torch.manual_seed(0)
    net, student = task.build()
    weights = load_file(str(teacher / "model.safetensors"))
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items() if not k.startswith("guidance_embed."))
    assert isinstance(student, GuidanceInput) and student.key == "guidance_features"
    enc = task.text.encoder.encode(["", *PROMPTS])
    cond = text_condition(enc[torch.tensor([1, 2, 1])])
    x, s = torch.randn(3, 3, 8, 8), torch.tensor([80.0, 1.0, 0.1])
    plain = task.teacher.denoiser(x, s, **cond)  # the teacher's conditional denoiser: guided at w = 1
    d_u = task.teacher.denoiser(x, s, **text_condition(enc[torch.tensor([0, 0, 0])]))  # the empty prompt
    w = torch.tensor([1.0, 2.5, 4.0])
    guided = task.teacher(x, s, guidance=w, **cond)
    torch.testing.assert_close(guided, d_u + w[:, None, None, None] * (plain - d_u))
    # the student at step 0 is the guided teacher at w = 1, whatever scale it reads (its input's last layer is 0)
    if cls is ProgressiveDistillTask:
        for scale in (1.0, 3.0):
            assert torch.equal(student(x, s, guidance=torch.full((3,), scale), **cond), plain)
        torch.testing.assert_close(student(x, s, guidance=2.0, **cond), task.teacher(x, s, guidance=1.0, **cond))
    else:  # a consistency function: the teacher's denoiser up to O(sigma_min / sigma), the identity at sigma_min
        with torch.no_grad():
            out = student(x[:1] * 80, torch.tensor([80.0]), guidance=3.0, **text_condition(enc[1:2]))
            ref = task.teacher.denoiser(x[:1] * 80, torch.tensor([80.0]), **text_condition(enc[1:2]))
        assert float((out - ref).abs().max()) <= 1e-4 * float((x[:1] * 80 - ref).abs().max())
        assert torch.equal(student(x, 0.002, guidance=3.0, **cond), x)


def test_the_draws_are_captions_of_the_drawn_images_dropped_to_the_empty_prompt(teacher):
    task = task_of(ProgressiveDistillTask, teacher)
    captions = ["", "a red square", "a crimson block", "a blue square"]
    ref = task.text.encoder.encode(captions)
    torch.testing.assert_close(task.text.encodings.pooled, ref.pooled, rtol=0, atol=1e-5)
    batch = task.draw(4000, torch.Generator().manual_seed(3))
    drawn = [captions[r] for r in batch["caption"].tolist()]
    for i, cap, drop in zip(batch["idx"].tolist(), drawn, batch["drop"].tolist(), strict=True):
        assert cap == "" if drop else cap in (("a red square", "a crimson block") if i % 2 == 0 else ("a blue square",))
    assert abs(batch["drop"].float().mean().item() - 0.3) < 0.03
    assert 1.0 <= float(batch["guidance"].min()) < 1.01 and 3.99 < float(batch["guidance"].max()) <= 4.0
    # the condition both networks read: the drawn captions' encodings (the empty prompt's where dropped)
    _, _, cond = task.inputs(batch, slice(0, 5))
    want = text_condition(task.text.encodings[batch["caption"][:5]])
    assert set(cond) == {"encoder_states", "encoder_mask", "encoder_pooled", "guidance"}
    assert all(torch.equal(cond[k], want[k]) for k in want)
    null = task.null_condition()
    assert torch.equal(null["encoder_pooled"], task.text.encodings.pooled[0:1])
    # a fixed scale: the teacher is classifier-free guided at it, with the empty prompt as the null condition
    fixed = task_of(ProgressiveDistillTask, teacher, guidance=3.0)
    assert (fixed.guidance.mode, fixed.net_config) == ("fixed", load(teacher, quiet=True).config["net"])
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([5.0, 0.5])
    c = text_condition(fixed.text.encodings[torch.tensor([1, 3])])
    d_c = fixed.teacher.denoiser(x, s, **c)
    d_u = fixed.teacher.denoiser(x, s, **text_condition(fixed.text.encodings[torch.tensor([0, 0])]))
    torch.testing.assert_close(fixed.teacher(x, s, **c), d_u + 3.0 * (d_c - d_u))


# ------------------------------------------------------------------------------------------- the student
@pytest.mark.parametrize("which", ["cm", "pd"])
def test_the_student_is_a_text_to_image_package_of_the_teacher(teacher, cm, pd, which):
    model = {"cm": cm, "pd": pd}[which]
    m, t = load(model, quiet=True), load(teacher, quiet=True)
    d, s = m.config["distilled"], m.config["sampling"]
    assert d["guidance_input"] == {"features": GUIDANCE_FEATURES, "range": [1.0, 4.0], "default": 2.0,
                                   "input": "guidance_features"}
    assert m.config["net"] == {**t.config["net"], "guidance_dim": GUIDANCE_FEATURES}
    for key in ("text_encoder", "conditioning", "sample_prompts", "image_shape"):
        assert m.config[key] == t.config[key]  # the encoder pinned as the teacher's, its digest included
    want = {"cm": (2, "consistency", "consistency"), "pd": (1, "euler", "progressive")}[which]
    assert (s["steps"], s["sampler"], d["method"], s["guidance"]) == (*want[:2], want[2], 2.0)
    name = d["teacher"]["name"]
    assert m.card.base_model == (name,) and m.card.license == "apache-2.0"
    assert m.lineage[0]["name"] == name and m.lineage[0]["manifest_sha256"] == t.manifest_sha256
    assert m.manifest.provenance["components"]["text_encoder"]["digest"] == t.config["text_encoder"]["digest"]
    card = m.read("MODEL_CARD.md").decode("utf-8")
    assert "pipeline_tag: text-to-image" in card and "--prompt" in card


def test_the_progressive_student_samples_one_call_per_step_reading_the_scale(pd):
    pipe = TextToImagePipeline.from_pretrained(pd, watermark=False)
    setting = pipe.sampling()
    grid = torch.tensor(pipe.config["distilled"]["sigmas"], dtype=torch.float64)
    assert (setting["sampler"], setting["steps"]) == ("euler", 1)
    assert isinstance(setting["schedule"], GridSchedule) and torch.equal(setting["schedule"].sigmas, grid)
    calls = network_calls(pipe)
    for w in (None, 3.5):
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # its own defaults: no warning
            images = pipe(PROMPTS, seeds=[5, 6], guidance_scale=w)
        assert calls == [2]  # one conditional call for the one step: no classifier-free guidance
        # exactly Euler on the recorded grid, the text condition as encoded by the pipeline, w through the input
        enc = pipe.encoder.encode([*PROMPTS, ""])
        noise = torch.stack([torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
        features = guidance_features(torch.full((2,), 2.0 if w is None else w))
        cond = {**text_condition(enc[0:2]), "guidance_features": features}
        want = SAMPLERS["euler"](lambda x, s, c=cond: pipe.denoiser.denoiser(x, s, **c), noise * 80.0, grid)
        torch.testing.assert_close(images, want, rtol=1e-5, atol=1e-5)


def test_the_consistency_student_samples_one_call_per_step_and_any_count(cm):
    pipe = TextToImagePipeline.from_pretrained(cm, watermark=False)
    calls = network_calls(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = pipe(PROMPTS, n=2, seeds=range(4), guidance_scale=3.0)
        pipe(PROMPTS, n=2, seeds=range(4), num_inference_steps=1)  # a consistency student samples any count
    assert calls == [4, 4, 4]
    # two training steps moved the scale input off zero: the scale reaches the images
    assert bool(pipe.denoiser.denoiser.denoiser.net.guidance_embed.mlp[2].weight.abs().sum() > 0)
    assert not torch.equal(a, pipe(PROMPTS, n=2, seeds=range(4), guidance_scale=1.5))


def test_a_student_with_the_scale_as_input_refuses_a_negative_prompt_and_an_interval(cm, tmp_path, capsys):
    pipe = TextToImagePipeline.from_pretrained(cm, watermark=False)
    with pytest.raises(ValueError, match=r"takes the guidance scale as an input .* cannot use a negative prompt"):
        pipe("a red square", negative_prompt="a blue square")
    # the empty negative prompt is the default null condition (what ebru serve sends without one): no refusal
    torch.testing.assert_close(pipe(PROMPTS, negative_prompt=["", ""], seeds=[3, 4]), pipe(PROMPTS, seeds=[3, 4]),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"takes the guidance scale as an input, so it cannot guide only within"):
        pipe("a red square", guidance_interval=(0.5, 5.0))
    with pytest.warns(UserWarning, match=r"distilled for guidance scales 1 to 4; 6 is outside them"):
        pipe("a red square", guidance_scale=6.0)
    code, _, err = run(capsys, "sample", cm, "--prompt", "a red square", "--negative-prompt", "a blue square",
                       "-n", "1", "--out-dir", tmp_path / "png")
    assert code == 2 and re.search(r"cannot use a negative prompt; drop it", err), err
    assert one_error(err)


def test_ebru_sample_uses_the_students_steps_and_sampler(cm, tmp_path, capsys, monkeypatch):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(log))
    code, _, err = run(capsys, "sample", cm, "--prompt", "a red square", "-n", "2", "--grid", tmp_path / "g.png")
    assert code == 0, err
    assert "distilled" not in err
    entry = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
    params = entry["data"]["parameters"]
    assert (params["sampler"], params["steps"], params["guidance"]) == ("consistency", 2, 2.0)
    code, _, err = run(capsys, "sample", cm, "--prompt", "a red square", "-n", "1", "--sampler", "euler",
                       "--out-dir", tmp_path / "e")
    lines = [line for line in err.splitlines() if "distilled" in line]
    assert code == 0 and len(lines) == 1 and "distilled (consistency) for 2 consistency steps" in lines[0]


def test_a_fixed_scale_student_refuses_a_negative_prompt_it_would_ignore(teacher, tmp_path):
    model = make(teacher, tmp_path / "d", "consistency", 1, guidance=3.0, steps_per_round=1)
    m = load(model, quiet=True)
    assert (m.config["distilled"]["guidance"], "guidance_input" in m.config["distilled"]) == (3.0, False)
    assert m.config["net"] == load(teacher, quiet=True).config["net"] and m.config["sampling"]["guidance"] == 1.0
    pipe = TextToImagePipeline.from_pretrained(model, watermark=False)
    calls = network_calls(pipe)
    pipe(PROMPTS)
    assert calls == [2]
    with pytest.raises(ValueError, match=r"guidance 3 distilled in .* a negative prompt would have no effect"):
        pipe("a red square", negative_prompt="a blue square")
    with pytest.warns(UserWarning, match=r"guidance 3 distilled in; guidance 2 is applied on top"):
        pipe("a red square", negative_prompt="a blue square", guidance_scale=2.0)


# ------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize(("method", "steps", "cut"), [("progressive", 1, "round-2"), ("consistency", 2, "round-1")])
def test_an_interrupted_distillation_resumes_to_the_same_student(teacher, tmp_path, monkeypatch, method, steps, cut):
    whole = make(teacher, tmp_path / "whole", method, steps, steps_per_round=3)
    real_step = Trainer.train_step

    def interrupted(self):
        if self.out.name.startswith(cut) and self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make(teacher, tmp_path / "cut", method, steps, steps_per_round=3)
    assert not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    again = make(teacher, tmp_path / "cut", method, steps, steps_per_round=3, resume=True)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- bad input
def test_reflow_of_a_text_to_image_teacher_is_refused_in_one_line(teacher, tmp_path, capsys):
    code, _, err = run(capsys, "distill", teacher, "--method", "reflow", "--steps", "1", "--out", tmp_path / "d")
    assert code == 2 and re.search(r"a text-to-image model, and reflow of text-to-image teachers is not implemented "
                                   r"\(each pair would need its caption\); distil it with --method consistency", err)
    assert one_error(err) and not (tmp_path / "d").exists()


def test_uncaptioned_data_for_a_text_to_image_teacher_is_refused_in_one_line(teacher, tmp_path, capsys):
    from .test_distill import image_folder

    folder = image_folder(tmp_path / "images", size=8)
    code, _, err = run(capsys, "distill", teacher, "--method", "consistency", "--steps", "1", "--out", tmp_path / "d",
                       "--data", folder, "--steps-per-round", "1")
    assert code == 2 and re.search(r"no captioned image left in .*images", err), err
    assert one_error(err)
    with pytest.raises(ValueError, match=r"the teacher is a text-to-image model and the data .* has no captions"):
        from ebru.data import load_dataset

        make(teacher, tmp_path / "e", "consistency", 1, data=load_dataset(str(folder)))
