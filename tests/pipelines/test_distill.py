"""Progressive distillation end to end: a tiny trained teacher distilled 4 -> 2 -> 1 in seconds.

The student package loads through ``ebru.load`` (its licence chain names the teacher), samples with its
own steps, sampler and grid by default, warns in one line when sampled otherwise, resumes bit for bit
after an interruption, and every bad input is refused in one line before any training.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ebru.pipelines.distill as distill_module
from ebru.cli import main
from ebru.cli.distill import METHODS
from ebru.diffusion import SAMPLERS, get_sigmas
from ebru.diffusion.distill import (
    DISTILL_METHODS,
    GUIDANCE_FEATURES,
    IMPLEMENTED_METHODS,
    GridSchedule,
    guidance_features,
)
from ebru.nets import build_net
from ebru.pipelines import ImagePipeline
from ebru.pipelines.distill import distill
from ebru.tasks.distill import ProgressiveDistillTask
from ebru.train import Trainer, load_config
from ebru.train import trainer as trainer_module
from ebru.trust import generate_key, load, write_package

TINY_NET = {"kind": "unet", "channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
            "num_heads": 1, "dropout": 0.0}
FAST = ["batch_size=8", "log_every=1", "checkpoint_every=1"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE", "EBRU_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


def image_folder(root, classes=("bag", "shoe"), per_class=8, size=8):
    g = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 256, (size, size), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def train_teacher(root, *settings):
    """A teacher trained 4 steps on a folder of 16 8x8 images (2 classes); it samples 4 euler steps."""
    data = image_folder(root / "data")
    cfg = load_config(None, [f"data={json.dumps(str(data))}", "steps=4", "batch_size=8", "warmup_steps=1",
                             "log_every=2", "checkpoint_every=0", "sample_steps=4", "sample_sampler=\"euler\"",
                             "ema_halflife_images=40", "device=\"cpu\"", "tensorboard=false", "license=\"apache-2.0\"",
                             *(f"model.{k}={json.dumps(v)}" for k, v in TINY_NET.items()), *settings])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_AUDIT_LOG", str(root / "audit.jsonl"))
        return Trainer(cfg, root / "run", progress=False).fit()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A class-conditional teacher (guidance 2 by default)."""
    return train_teacher(tmp_path_factory.mktemp("distill-teacher"))


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """The teacher distilled 4 -> 2 -> 1, three training steps per round; the guidance scale is its input."""
    out = tmp_path_factory.mktemp("distill-student") / "d"
    return distill(teacher, steps=1, out=out, steps_per_round=3, overrides=FAST, device="cpu", progress=False)


@pytest.fixture(scope="module")
def baked(teacher, tmp_path_factory):
    """The teacher distilled 4 -> 2 with guidance 3 in its weights."""
    out = tmp_path_factory.mktemp("distill-baked") / "d"
    return distill(teacher, steps=2, out=out, guidance=3.0, steps_per_round=2, overrides=FAST, device="cpu",
                   progress=False)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> bool:
    """Exactly one ``ebru: error:`` line and no stack trace (warnings about an unsigned teacher may precede it)."""
    return len([line for line in err.splitlines() if line.startswith("ebru: error:")]) == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------------------- the student
def test_the_student_is_a_package_made_for_one_euler_step(teacher, student):
    assert student == student.parent / "model"
    rounds = sorted(p.name for p in student.parent.glob("round-*"))
    assert rounds == ["round-1-4to2", "round-2-2to1"]
    m = load(student, quiet=True)
    d, s = m.config["distilled"], m.config["sampling"]
    assert (d["method"], d["steps"], d["sampler"], d["guidance"]) == ("progressive", 1, "euler", None)
    # the teacher samples at guidance 2: the student takes scales 1 to 4 as an input, 2 by default
    assert d["guidance_input"] == {"features": GUIDANCE_FEATURES, "range": [1.0, 4.0], "default": 2.0}
    assert m.config["net"] == {**load(teacher, quiet=True).config["net"], "pooled_dim": GUIDANCE_FEATURES}
    assert d["sigmas"] == [80.0, 0.0]
    assert (s["steps"], s["sampler"], s["guidance"]) == (1, "euler", 2.0)
    t = load(teacher, quiet=True)
    assert d["teacher"]["manifest_sha256"] == t.manifest_sha256 and d["teacher"]["steps"] == 4
    # the licence chain: the card's base_model is the teacher, whose signed lineage entry carries its licence
    name = d["teacher"]["name"]
    assert m.card.base_model == (name,) and m.card.license == "apache-2.0"
    assert m.lineage[0]["name"] == name and m.lineage[0]["manifest_sha256"] == t.manifest_sha256
    assert [f.model for f in m.license.findings] == ["this model", name]
    assert m.manifest.provenance["created_by"] == "ebru distill"
    # the intermediate 2-step student records the halved grid: every other level of karras(4)
    mid = load(student.parent / "round-1-4to2" / "model", quiet=True).config["distilled"]
    assert mid["sigmas"] == get_sigmas("karras", 4, 0.002, 80.0)[::2].tolist()
    assert mid["teacher"] == d["teacher"]


def test_a_fixed_guidance_scale_is_distilled_into_the_weights(teacher, baked):
    m = load(baked, quiet=True)
    d, s = m.config["distilled"], m.config["sampling"]
    assert (d["steps"], d["guidance"], "guidance_input" in d) == (2, 3.0, False)
    assert s["guidance"] == 1.0  # no classifier-free guidance on top of the distilled one
    assert m.config["net"] == load(teacher, quiet=True).config["net"]
    pipe = ImagePipeline.from_pretrained(baked, watermark=False)
    with pytest.warns(UserWarning, match=r"guidance 3 distilled in; guidance 2 is applied on top"):
        pipe(1, guidance_scale=2.0)


def counted(pipe):
    """Count the network's forward calls (and the batch each sees)."""
    calls = []
    pipe.denoiser.denoiser.net.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    return calls


@pytest.mark.parametrize(("which", "steps", "w"), [("student", 1, None), ("mid", 2, 3.5), ("baked", 2, None)])
def test_the_student_samples_its_own_steps_on_its_own_grid_one_call_per_step(student, baked, which, steps, w):
    path = {"student": student, "mid": student.parent / "round-1-4to2" / "model", "baked": baked}[which]
    pipe = ImagePipeline.from_pretrained(path, watermark=False)
    setting = pipe.sampling()
    assert (setting["sampler"], setting["steps"]) == ("euler", steps)
    grid = torch.tensor(pipe.config["distilled"]["sigmas"], dtype=torch.float64)
    assert isinstance(setting["schedule"], GridSchedule) and torch.equal(setting["schedule"].sigmas, grid)
    net_calls = counted(pipe) if which != "baked" else []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own defaults: no warning
        images = pipe(2, class_labels=[0, 1], seeds=[5, 6], guidance_scale=w)
    # exactly Euler on the recorded grid from each seed's noise, one conditional network call per step (no CFG);
    # a student with the scale as an input reads w (default 2) as features through its pooled input
    noise = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    labels = torch.tensor([0, 1])
    if which == "baked":
        d = pipe.denoiser
        want = SAMPLERS["euler"](lambda x, s: d(x, s, class_labels=labels), noise * 80.0, grid)
    else:
        assert net_calls == [2] * steps
        features = guidance_features(torch.full((2,), 2.0 if w is None else w))
        d = pipe.denoiser.denoiser  # the Precond under the guidance input
        want = SAMPLERS["euler"](lambda x, s: d(x, s, class_labels=labels, encoder_pooled=features), noise * 80.0,
                                 grid)
    torch.testing.assert_close(images, want, rtol=1e-5, atol=1e-5)


def test_a_guidance_input_student_refuses_an_interval_and_warns_outside_its_range(student):
    pipe = ImagePipeline.from_pretrained(student, watermark=False)
    with pytest.warns(UserWarning, match=r"distilled for guidance scales 1 to 4; 6 is outside them"):
        pipe(1, guidance_scale=6.0)
    with pytest.raises(ValueError, match=r"takes the guidance scale as an input, so it cannot guide only within"):
        pipe(1, guidance_interval=(0.5, 5.0))


def test_sampling_a_student_otherwise_warns_in_one_line(student):
    pipe = ImagePipeline.from_pretrained(student, watermark=False)
    for kw, what in (({"sampler": "heun"}, r"sampler heun"), ({"num_inference_steps": 2}, r"2 steps"),
                     ({"schedule": "karras"}, r"schedule karras")):
        with pytest.warns(UserWarning, match=r"distilled \(progressive\) for 1 euler steps.*" + what) as rec:
            pipe(1, **kw)
        assert len(rec) == 1 and "\n" not in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(1, sampler="ddim")  # deterministic DDIM is the same step


def round_task(teacher, **distill_table):
    cfg = load_config(None, ["task=\"progressive_distill\"", "device=\"cpu\"",
                             f"data={json.dumps(load(teacher, quiet=True).config['training']['config']['data'])}"])
    cfg.distill = {"teacher": str(teacher), "quiet": True, "allow_unsigned": True, **distill_table}
    return ProgressiveDistillTask(cfg, torch.device("cpu"))


def test_the_task_starts_the_student_at_the_teacher_and_guides_only_the_first_teacher(teacher, student):
    task = round_task(teacher)
    g = task.guidance
    assert (task.steps, g.mode, g.range, g.default, g.teacher_guided) == (2, "input", (1.0, 4.0), 2.0, True)
    assert torch.equal(task.teacher_sigmas, get_sigmas("karras", 4, 0.002, 80.0))
    torch.manual_seed(0)
    net, student_d = task.build()
    weights = load_file(str(teacher / "model.safetensors"))
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items() if not k.startswith("pooled_embed."))
    # the student starts as exactly the (unguided) teacher network, whatever scale it is given ...
    x, s, y = torch.randn(3, 1, 8, 8), torch.tensor([80.0, 1.0, 0.1]), torch.tensor([0, 1, 0])
    plain = task.teacher.denoiser(x, s, class_labels=y)
    for w in (1.0, 3.0):
        assert torch.equal(student_d(x, s, class_labels=y, guidance=torch.full((3,), w)), plain)
    # ... and the scale reaches the network once its zero-initialised last layer moves
    torch.nn.init.normal_(net.pooled_embed.mlp[2].weight)
    assert not torch.equal(student_d(x, s, class_labels=y, guidance=1.0), student_d(x, s, class_labels=y, guidance=3.0))
    # the teacher target is guided per sample: D_u + w (D_c - D_u)
    w = torch.tensor([1.0, 2.5, 4.0])
    d_u = task.teacher.denoiser(x, s, class_labels=torch.full((3,), -1))
    want = d_u + w[:, None, None, None] * (plain - d_u)
    torch.testing.assert_close(task.teacher(x, s, class_labels=y, guidance=w), want)
    batch = task.draw(4000, torch.Generator().manual_seed(0))
    assert 1.0 <= float(batch["guidance"].min()) < 1.01 and 3.99 < float(batch["guidance"].max()) <= 4.0
    # a round whose teacher is a student takes the same scale input and is not guided again
    task2 = round_task(student.parent / "round-1-4to2" / "model")
    assert (task2.steps, task2.guidance.mode, task2.guidance.range, task2.guidance.teacher_guided) == (
        1, "input", (1.0, 4.0), False)
    assert torch.equal(task2.teacher_sigmas, task.student_sigmas)
    assert task2.net_config == task.net_config
    with pytest.raises(ValueError, match=r"distilled with guidance \(1.0, 4.0\), and its students keep it"):
        round_task(student.parent / "round-1-4to2" / "model", guidance=3.0)
    # one fixed scale: the teacher is classifier-free guided at it, the student's network is the teacher's
    task3 = round_task(teacher, guidance=3.0)
    assert (task3.guidance.mode, task3.guidance.scale, task3.net_config) == ("fixed", 3.0, task.teacher_config["net"])
    torch.testing.assert_close(task3.teacher(x, s, class_labels=y), d_u + 3.0 * (plain - d_u))
    with pytest.raises(ValueError, match=r"unknown distill key 'teachr' \(did you mean 'teacher'\?\)"):
        round_task(teacher, teachr="x")
    with pytest.raises(ValueError, match=r"range must have LO < HI"):
        round_task(teacher, guidance=[3.0, 1.0])


def test_an_interrupted_distillation_resumes_to_the_same_student(teacher, tmp_path, monkeypatch, capsys):
    whole = distill(teacher, steps=1, out=tmp_path / "whole", steps_per_round=4, overrides=FAST, device="cpu",
                    progress=False)
    real_step = Trainer.train_step

    def interrupted(self):
        if self.out.name.startswith("round-2") and self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, steps=1, out=tmp_path / "cut", steps_per_round=4, overrides=FAST, device="cpu",
                progress=False)
    assert not (tmp_path / "cut" / "model").exists()
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    code, out, err = run(capsys, "distill", teacher, "--steps", "1", "--out", tmp_path / "cut", "--resume",
                         "--steps-per-round", "4", *(a for s in FAST for a in ("--set", s)), "--set", "device=cpu")
    assert code == 0, err
    assert "round 1/2: 4 -> 2 steps already done" in out and "resumed from step 2" in out
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, _, err = run(capsys, "distill", teacher, "--steps", "1", "--out", tmp_path / "cut", "--resume")
    assert code == 0 and "already made" in _  # a finished distillation resumes to its student
    # starting over a distillation, resuming another one, or resuming nothing: one line each
    for argv, msg in (([], r"already holds a distillation: pass --resume"),
                      (["--resume", "--steps", "2"], r"another steps \(1, now 2\)"),
                      (["--resume", "--out", tmp_path / "empty"], r"no distillation to resume")):
        args = ["distill", teacher, "--steps", "1", "--out", tmp_path / "cut", *argv]
        code, _, err = run(capsys, *args)
        assert code == 2 and re.search(msg, err), err
        assert one_error(err)


def test_cli_distills_from_the_recorded_data_and_ebru_sample_uses_the_student_defaults(teacher, tmp_path, capsys):
    out = tmp_path / "d"
    code, stdout, err = run(capsys, "distill", teacher, "--steps", "2", "--out", out, "--steps-per-round", "2",
                            "--set", "batch_size=8", "--set", "device=cpu")
    assert code == 0, err
    assert f"student: {out / 'model'}" in stdout
    code, stdout, err = run(capsys, "sample", out / "model", "-n", "2", "--out-dir", tmp_path / "png")
    assert code == 0, err
    assert "distilled" not in err
    code, _, err = run(capsys, "sample", out / "model", "-n", "2", "--sampler", "heun", "--out-dir", tmp_path / "h")
    assert code == 0
    lines = [line for line in err.splitlines() if "distilled" in line]
    assert len(lines) == 1 and lines[0].startswith("ebru: warning: this model was distilled (progressive) for 2 euler")


# ------------------------------------------------------------------------------------------- bad input
def other_package(path, config, license_id="apache-2.0"):
    net = {**TINY_NET, "image_size": 8, "in_channels": 1, "out_channels": 1, "num_classes": None}
    weights = {k: torch.zeros_like(v) for k, v in build_net(net).state_dict().items()}
    card = f"---\nlicense: {license_id}\nbase_model: null\nintended_use: tests\n---\n# x\n"
    return write_package(path, {"net": net, **config}, weights, card, {"created_by": "tests"})


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, r"model directory not found: .*/t$"),
    (lambda p: (p.mkdir(), (p / "x.txt").write_text("hi", encoding="utf-8")),
     r"manifest.json: missing: this directory is not a verified model package"),
    (lambda p: other_package(p, {"kind": "text-diffusion"}),
     r"config.json: a 'text-diffusion' model; ebru distill makes few-step students of ebru image-diffusion models"),
    (lambda p: other_package(p, {"kind": "image-diffusion", "image_shape": [1, 8, 8]}, "cc-by-nc-4.0"),
     r"MODEL_CARD.md: licence 'cc-by-nc-4.0' is denied by the licence policy"),
])
def test_a_teacher_that_cannot_be_distilled_is_refused_in_one_line(tmp_path, capsys, make, message):
    make(tmp_path / "t")
    code, _, err = run(capsys, "distill", tmp_path / "t", "--steps", "2", "--out", tmp_path / "d")
    assert code == 2 and re.search(message, err), err
    assert one_error(err) and not (tmp_path / "d").exists()


def test_an_unsigned_teacher_is_refused_where_signatures_are_required(teacher, tmp_path, capsys):
    _, pub = generate_key(tmp_path / "private", "release")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / pub.name).write_bytes(pub.read_bytes())
    code, _, err = run(capsys, "distill", teacher, "--steps", "2", "--out", tmp_path / "d",
                       "--trusted-keys", tmp_path / "keys")
    assert code == 2 and re.search(r"model.sig: missing: the package is unsigned and trusted keys are configured", err)
    assert one_error(err)


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "3"], r"halves the teacher's 4 steps .* one of 2, 1; got 3"),
    (["--steps", "4"], r"one of 2, 1; got 4"),
    (["--steps", "2", "--teacher-steps", "6"], r"halves the teacher's 6 steps .* one of 3; got 2"),
    (["--steps", "1", "--time-budget", "0.0001"], r"time budget of 0.0001 min is too small for one round: 2 round"),
    (["--steps", "2", "--method", "reflow"], r"a 'edm' model, and reflow straightens the paths of flow models "
                                             r"\(prediction \"flow\"\); distil it with --method progressive or "
                                             r"--method consistency"),
    (["--steps", "2", "--pairs", "100"], r"pairs are for reflow; progressive distillation trains on the teacher's"),
    (["--steps", "2", "--method", "progresive"], r"did you mean 'progressive'"),
    (["--steps", "2", "--guidance", "nan"], r"--guidance: must be finite"),
    (["--steps", "2", "--guidance", "3,1"], r"--guidance: expected LO < HI"),
    (["--steps", "2", "--data", "fashion-mnist"], r"the data's images are 1x28x28 and the teacher makes 1x8x8"),
])
def test_bad_counts_budgets_and_methods_are_refused_in_one_line(teacher, tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "distill", teacher, "--out", tmp_path / "d", "--set", "device=cpu", *argv)
    assert code == 2 and re.search(message, err), err
    assert one_error(err)
    assert not (tmp_path / "d" / "distill.json").exists()  # nothing to resume, nothing to clear


def test_the_cli_methods_are_the_libraries():
    assert METHODS == DISTILL_METHODS == IMPLEMENTED_METHODS  # every method runs
    assert set(distill_module.PLANNERS) == set(IMPLEMENTED_METHODS)  # every method that runs has its plan of rounds


def test_the_distillation_names_are_exported_by_ebru_diffusion():
    import ebru.diffusion
    from ebru.diffusion.consistency import ConsistencyDenoiser
    from ebru.diffusion.reflow import CouplingDenoiser

    assert ebru.diffusion.ConsistencyDenoiser is ConsistencyDenoiser
    assert ebru.diffusion.CouplingDenoiser is CouplingDenoiser
    assert {"ConsistencyDenoiser", "CouplingDenoiser", "make_pairs", "reflow_loss"} <= set(ebru.diffusion.__all__)


def test_a_time_budget_is_split_evenly_between_the_rounds(teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distill_module, "MIN_ROUND_STEPS", 10)  # the floor is tested above; here, the split
    model = distill(teacher, steps=1, out=tmp_path / "d", time_budget=0.05, overrides=["batch_size=8"], device="cpu",
                    progress=False)
    out = capsys.readouterr().out
    assert out.count("time budget of 0.025 min spent") == 2  # both rounds stop at half the budget
    for name in ("round-1-4to2", "round-2-2to1"):
        minutes = load(tmp_path / "d" / name / "model", quiet=True).config["training"]["minutes"]
        assert 0.02 <= minutes <= 0.04
    assert load(model, quiet=True).config["distilled"]["steps"] == 1


def test_a_sign_key_signs_every_round_and_the_student(teacher, tmp_path):
    key, pub = generate_key(tmp_path / "private", "release")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / pub.name).write_bytes(pub.read_bytes())
    model = distill(teacher, steps=2, out=tmp_path / "d", sign_key=str(key), trusted_keys=str(tmp_path / "keys"),
                    allow_unsigned=True, steps_per_round=1, overrides=FAST, device="cpu", progress=False)
    for path in (model, tmp_path / "d" / "round-1-4to2" / "model"):
        m = load(path, trusted_keys=tmp_path / "keys", quiet=True)
        assert m.signer is not None and m.signer.name == "release"
        assert key.as_posix() not in (path / "config.json").read_text(encoding="utf-8")  # the key's ID, not its path


def test_an_unconditional_teacher_distils_without_guidance(tmp_path, capsys):
    teacher = train_teacher(tmp_path / "t", "class_conditional=false")
    with pytest.raises(ValueError, match=r"guidance is for class-conditional teachers, and this one has no classes"):
        distill(teacher, steps=2, out=tmp_path / "x", guidance=2.0, device="cpu", progress=False)
    model = distill(teacher, steps=2, out=tmp_path / "d", steps_per_round=1, overrides=FAST, device="cpu",
                    progress=False)
    m = load(model, quiet=True)
    assert (m.config["num_classes"], m.config["distilled"]["guidance"]) == (None, None)
    assert "guidance_input" not in m.config["distilled"] and m.config["net"] == load(teacher, quiet=True).config["net"]
    assert m.card.front_matter["pipeline_tag"] == "unconditional-image-generation"
    pipe = ImagePipeline.from_pretrained(model, watermark=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipe(2).shape == (2, 1, 8, 8)
    assert (tmp_path / "d" / "round-1-4to2" / "samples" / "step-0000001.png").is_file()  # the preview grid


def test_a_student_distils_further_and_still_names_the_first_teacher(teacher, student, tmp_path):
    mid = student.parent / "round-1-4to2" / "model"
    model = distill(mid, steps=1, out=tmp_path / "d", steps_per_round=1, overrides=FAST, device="cpu",
                    progress=False, allow_unsigned=True)
    m, first = load(model, quiet=True), load(teacher, quiet=True)
    d = m.config["distilled"]
    assert (d["steps"], d["sigmas"], d["teacher"]["manifest_sha256"]) == (1, [80.0, 0.0], first.manifest_sha256)
    assert d["guidance_input"]["range"] == [1.0, 4.0]  # the scale input carries over
    assert m.card.base_model == (d["teacher"]["name"],) and m.lineage[0]["manifest_sha256"] == first.manifest_sha256
