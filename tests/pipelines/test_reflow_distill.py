"""``ebru distill --method reflow`` end to end: a tiny flow teacher's pairs, then one training round, in seconds.

The pairs are kept in the run directory and resumed chunk by chunk; the student is a package ``ebru.load``
accepts that ``ebru sample`` samples with N Euler steps on its own grid; an interruption in the pairs or in
training resumes to the same student bit for bit; the time budget covers pairs and training; a teacher that
is not a flow model and every other method's setting are refused in one line before anything is written.
"""

from __future__ import annotations

import json
import re
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ebru.pipelines.distill as distill_module
import ebru.tasks.reflow_pairs as pairs_module
from ebru.cli import main
from ebru.diffusion import SAMPLERS, reflow_grid
from ebru.diffusion.distill import GridSchedule
from ebru.nets import build_net
from ebru.pipelines import ImagePipeline
from ebru.pipelines.distill import distill
from ebru.tasks.reflow_pairs import INDEX, ensure_pairs
from ebru.train import Trainer, load_config
from ebru.train import trainer as trainer_module
from ebru.trust import load, write_package

TINY_NET = {"kind": "unet", "channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
            "num_heads": 1, "dropout": 0.0}
FLOW = ["prediction=\"flow\"", "weighting=\"flow\"", "p_mean=0.0", "p_std=1.0"]
# 8 pairs in 2 chunks of 4, drawn by dpmpp_2m in 2 steps; training batches of 8, a checkpoint every step
PAIRS = ["distill.pair_steps=2", "distill.pair_batch=4", "distill.pair_chunk=4"]
FAST = [*PAIRS, "batch_size=8", "log_every=1", "checkpoint_every=1", "warmup_steps=1", "ema_halflife_images=40"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE", "EBRU_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("EBRU_CACHE", str(tmp_path / "cache"))  # nothing may land in the shared cache


def image_folder(root, classes=("bag", "shoe"), per_class=8, size=8):
    g = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 256, (size, size), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A class-conditional flow teacher trained 4 steps on 16 8x8 images (sampling guidance 2, ebru's default)."""
    root = tmp_path_factory.mktemp("reflow-distill-teacher")
    data = image_folder(root / "data")
    cfg = load_config(None, [f"data={json.dumps(str(data))}", *FLOW, "sample_steps=4", "steps=4", "batch_size=8",
                             "warmup_steps=1", "log_every=1", "checkpoint_every=0", "ema_halflife_images=40",
                             "device=\"cpu\"", "tensorboard=false", "license=\"apache-2.0\"",
                             *(f"model.{k}={json.dumps(v)}" for k, v in TINY_NET.items())])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_AUDIT_LOG", str(root / "audit.jsonl"))
        return Trainer(cfg, root / "run", progress=False).fit()


def reflow(teacher, out, **kw):
    kw = {"steps": 2, "pairs": 8, "steps_per_round": 3, "overrides": FAST, "device": "cpu", "progress": False, **kw}
    return distill(teacher, method="reflow", out=out, **kw)


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """The teacher reflowed for 2 Euler steps: 8 pairs, 3 training steps, uninterrupted."""
    return reflow(teacher, tmp_path_factory.mktemp("reflow-distill") / "d")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> bool:
    """Exactly one ``ebru: error:`` line and no stack trace (warnings about an unsigned teacher may precede it)."""
    return len([line for line in err.splitlines() if line.startswith("ebru: error:")]) == 1 and "Traceback" not in err


def counting(monkeypatch, interrupt_at=None):
    """Count the teacher's pair generations (one per chunk); raise KeyboardInterrupt at call ``interrupt_at``."""
    calls = []
    real = pairs_module.make_pairs

    def wrapped(*args, **kw):
        calls.append(args[1])
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(pairs_module, "make_pairs", wrapped)
    return calls


def same_weights(a, b) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------- the student
def test_the_student_is_a_reflow_package_trained_on_the_pairs_kept_in_the_run_directory(teacher, student):
    out = student.parent
    assert student == out / "model" and sorted(p.name for p in out.glob("round-*")) == ["round-1-reflow"]
    m, t = load(student, quiet=True), load(teacher, quiet=True)
    d, s = m.config["distilled"], m.config["sampling"]
    assert (d["method"], d["steps"], d["sampler"], d["schedule"]) == ("reflow", 2, "euler", "flow")
    assert d["sigmas"] == reflow_grid(2, 80.0).tolist()
    assert (s["sampler"], s["steps"], s["schedule"], s["guidance"]) == ("euler", 2, "flow", 1.0)
    assert d["guidance"] == 2.0 and m.config["precond"]["prediction"] == "flow"  # the guided teacher's pairs
    p = d["pairs"]
    assert (p["count"], p["sampler"], p["steps"], p["seeds"], p["guidance"]) == (8, "dpmpp_2m", 2, [0, 7], 2.0)
    assert m.config["training"]["steps"] == 3
    # the licence chain: base_model is the teacher, its signed lineage entry carries the licence
    assert d["teacher"]["manifest_sha256"] == t.manifest_sha256
    assert m.card.base_model == (d["teacher"]["name"],) and m.card.license == "apache-2.0"
    assert m.manifest.provenance["created_by"] == "ebru distill"
    # the pairs: in DIR/pairs, two verified chunks, exactly those the student was trained on
    index = json.loads((out / "pairs" / INDEX).read_text(encoding="utf-8"))
    assert [(c["start"], c["count"]) for c in index["chunks"]] == [(0, 4), (4, 4)]
    kept = ensure_pairs(out / "pairs", pairs_module.PairSpec(**{
        **index["spec"], "sigmas": tuple(index["spec"]["sigmas"]), "shape": tuple(index["spec"]["shape"])}), 8, None)
    assert kept.content_hash == p["sha256"] == m.manifest.provenance["dataset_hash"]
    assert not (pairs_module.default_pairs_dir(kept.spec)).exists()  # nothing in the shared cache
    plan = json.loads((out / "distill.json").read_text(encoding="utf-8"))
    assert (plan["method"], plan["steps"], plan["pairs"], plan["rounds"]) == ("reflow", 2, 8, ["round-1-reflow"])
    assert plan["teacher"]["manifest_sha256"] == t.manifest_sha256 and plan["pair_seconds"] > 0


def test_ebru_sample_samples_the_student_with_n_euler_steps_on_its_own_grid(student, tmp_path, capsys):
    pipe = ImagePipeline.from_pretrained(student, watermark=False)
    setting = pipe.sampling()
    assert (setting["sampler"], setting["steps"]) == ("euler", 2)
    assert isinstance(setting["schedule"], GridSchedule) and torch.equal(setting["schedule"].sigmas,
                                                                         reflow_grid(2, 80.0))
    calls = []
    pipe.denoiser.net.register_forward_hook(lambda mod, args, out: calls.append(len(args[0])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own defaults: no warning
        images = pipe(2, class_labels=[0, 1], seeds=[3, 4])
    assert calls == [2, 2]  # one conditional call per step: guidance is in the weights
    noise = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    labels = torch.tensor([0, 1])
    want = SAMPLERS["euler"](lambda x, s: pipe.denoiser(x, s, class_labels=labels), noise * 80.0,
                             reflow_grid(2, 80.0))
    torch.testing.assert_close(images, want, rtol=1e-5, atol=1e-5)
    code, _, err = run(capsys, "sample", student, "-n", "2", "--out-dir", tmp_path / "png")
    assert code == 0, err
    assert "distilled" not in err and len(list((tmp_path / "png").glob("*.png"))) == 2


@pytest.mark.parametrize("sampler, steps", [("euler", 4), ("heun", 2), ("dpmpp_2m", 8)])
def test_a_reflowed_student_is_an_ordinary_flow_model_any_sampler_and_step_count_without_a_warning(
        student, sampler, steps):
    pipe = ImagePipeline.from_pretrained(student, watermark=False)
    assert pipe.distilled_warning(pipe.sampling(sampler, steps)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(1, class_labels=[0], seeds=[3], sampler=sampler, num_inference_steps=steps)


# ------------------------------------------------------------------------------------------- resuming
def test_an_interrupted_pair_generation_resumes_at_its_first_missing_chunk_to_the_same_student(
        teacher, student, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cut"
    counting(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        reflow(teacher, out)
    index = json.loads((out / "pairs" / INDEX).read_text(encoding="utf-8"))
    assert [c["start"] for c in index["chunks"]] == [0]  # the first chunk is kept
    assert not (out / "round-1-reflow").exists() and not (out / "model").exists()
    plan = json.loads((out / "distill.json").read_text(encoding="utf-8"))
    assert plan["pair_seconds"] > 0  # the interrupted generation's time is recorded
    # a resumed budget counts the time earlier runs spent on pairs, and prices only the missing ones
    (out / "distill.json").write_text(json.dumps({**plan, "pair_seconds": 500.0}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"too small for reflow: the 4 pairs still to make .* \(and 500 s already "
                                         r"spent on them\)"):
        reflow(teacher, out, resume=True, time_budget=5.0)
    calls = counting(monkeypatch)
    model = reflow(teacher, out, resume=True)
    assert calls == [4]  # only the second chunk is generated
    assert same_weights(model, student)
    assert json.loads((out / "distill.json").read_text(encoding="utf-8"))["pair_seconds"] > 500.0


def test_an_interrupted_training_resumes_bit_for_bit_from_the_cli(teacher, student, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cut"
    real_step = Trainer.train_step

    def interrupted(self):
        if self.out.name == "round-1-reflow" and self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reflow(teacher, out)
    assert not (out / "model").exists()
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    calls = counting(monkeypatch)
    code, stdout, err = run(capsys, "distill", teacher, "--method", "reflow", "--steps", "2", "--pairs", "8",
                            "--out", out, "--resume", "--steps-per-round", "3",
                            *(a for s in FAST for a in ("--set", s)), "--set", "device=cpu")
    assert code == 0, err
    assert calls == [] and "resumed from step 2" in stdout  # the pairs are read back, training resumes
    assert f"student: {out / 'model'}" in stdout and f"pairs:   {out}/pairs/" in stdout
    assert same_weights(out / "model", student)
    # resuming with another number of pairs is another distillation
    code, _, err = run(capsys, "distill", teacher, "--method", "reflow", "--steps", "2", "--pairs", "9",
                       "--out", out, "--resume")
    assert code == 2 and re.search(r"another pairs \(8, now 9\)", err) and one_error(err)


# ------------------------------------------------------------------------------------------- the time budget
def test_the_time_budget_covers_the_pairs_and_training_gets_what_is_left(teacher, tmp_path, monkeypatch, capsys):
    # the floor is priced from measured speeds; here they are fixed so the split itself is checked
    monkeypatch.setattr(distill_module, "MIN_ROUND_STEPS", 10)
    monkeypatch.setattr(distill_module, "_seconds_per_pair", lambda task, missing: 0.5)
    monkeypatch.setattr(distill_module, "_step_seconds", lambda trainer: 0.1)
    # 8 pairs at 0.5 s and 10 steps at 0.1 s need 5 s: 0.08 min is refused, naming 0.09 min, before anything
    with pytest.raises(ValueError, match=r"a time budget of 0.08 min is too small for reflow: the 8 pairs still to "
                                         r"make take about 4 s \(0.5 s per pair here\), and its round needs at least "
                                         r"10 training steps \(1 s at 0.1 s per step\); give at least 0.09 min") as e:
        reflow(teacher, tmp_path / "small", time_budget=0.08, steps_per_round=None)
    assert "\n" not in str(e.value) and not (tmp_path / "small").exists()
    model = reflow(teacher, tmp_path / "d", time_budget=0.1, steps_per_round=None)
    spent = json.loads((tmp_path / "d" / "distill.json").read_text(encoding="utf-8"))["pair_seconds"]
    budget = load(model, quiet=True).config["training"]["config"]["time_budget"]
    assert 0 < spent < 6 and budget == pytest.approx((6.0 - spent) / 60, rel=1e-9)  # training gets what is left
    assert f"time budget of {budget:g} min spent" in capsys.readouterr().out


def test_pairs_slower_than_measured_leave_training_its_floor_with_one_warning(teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(distill_module, "MIN_ROUND_STEPS", 10)
    monkeypatch.setattr(distill_module, "_seconds_per_pair", lambda task, missing: 0.0)  # priced free ...
    monkeypatch.setattr(distill_module, "_step_seconds", lambda trainer: 0.001)
    make_pairs = distill_module._ReflowPlanning.pairs

    def slow_pairs(self, generate, progress):  # ... and take 0.05 s at least, whatever the machine's speed
        time.sleep(0.05)
        return make_pairs(self, generate, progress)

    monkeypatch.setattr(distill_module._ReflowPlanning, "pairs", slow_pairs)
    with pytest.warns(UserWarning, match=r"the reflow pairs took .* s, longer than measured: training gets 0.01 s "
                                         r"\(10 steps\), .* s over the time budget") as rec:
        model = reflow(teacher, tmp_path / "d", time_budget=0.0005, steps_per_round=None)  # a 0.03 s budget
    assert len([w for w in rec if "reflow pairs took" in str(w.message)]) == 1
    config = load(model, quiet=True).config["training"]
    assert config["config"]["time_budget"] == pytest.approx(0.01 / 60, rel=1e-9) and config["steps"] >= 1


def test_a_budget_too_small_for_the_pairs_is_refused_at_the_measured_speed(teacher, tmp_path, capsys):
    code, _, err = run(capsys, "distill", teacher, "--method", "reflow", "--steps", "2", "--pairs", "8",
                       "--out", tmp_path / "d", "--time-budget", "0.0001", *(a for s in FAST for a in ("--set", s)),
                       "--set", "device=cpu")
    assert code == 2 and one_error(err)
    assert re.search(r"time budget of 0.0001 min is too small for reflow: the 8 pairs still to make take about "
                     r"[\d.e+-]+ s \([\d.e+-]+ s per pair here\), and its round needs at least 100 training steps", err)
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------------- bad input
def edm_teacher(path):
    net = {**TINY_NET, "image_size": 8, "in_channels": 1, "out_channels": 1, "num_classes": None}
    weights = {k: torch.zeros_like(v) for k, v in build_net(net).state_dict().items()}
    card = "---\nlicense: apache-2.0\nbase_model: null\nintended_use: tests\n---\n# x\n"
    return write_package(path, {"kind": "image-diffusion", "net": net, "image_shape": [1, 8, 8], "num_classes": None,
                                "precond": {"prediction": "edm", "sigma_data": 0.5}}, weights, card,
                         {"created_by": "tests"})


def test_an_edm_teacher_is_refused_in_one_line_naming_the_other_methods(tmp_path, capsys):
    path = edm_teacher(tmp_path / "t")
    code, _, err = run(capsys, "distill", path, "--method", "reflow", "--steps", "1", "--out", tmp_path / "d")
    assert code == 2 and one_error(err)
    assert re.search(r"a 'edm' model, and reflow straightens the paths of flow models \(prediction \"flow\"\); "
                     r"distil it with --method progressive or --method consistency", err), err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--teacher-steps", "4"], r"teacher steps are for progressive distillation; .* drop --teacher-steps"),
    (["--data", "fashion-mnist"], r"reflow trains on its teacher's pairs, not on images: drop --data"),
    (["--guidance", "1,3"], r"reflow draws its pairs at one guidance scale W; a range \[1.0, 3.0\]"),
    (["--set", "distill.pair_samplr=heun"], r"unknown distill key 'pair_samplr' \(did you mean 'pair_sampler'\?\)"),
    (["--set", "distill.pair_sampler=ddpm"], r"need a deterministic sampler .*'ddpm' is stochastic"),
    (["--set", "distill.time=uniformm"], r"unknown reflow time distribution 'uniformm'"),
    (["--pairs", "0"], r"--pairs: .*positive"),
    (["--method", "progressive", "--pairs", "10"], r"pairs are for reflow; progressive distillation trains on the "
                                                   r"teacher's data: drop --pairs"),
])
def test_other_settings_are_refused_in_one_line_before_anything_is_written(teacher, tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "distill", teacher, "--method", "reflow", "--steps", "2", "--out", tmp_path / "d",
                       "--set", "device=cpu", *argv)
    assert code == 2 and re.search(message, err), err
    assert one_error(err) and not (tmp_path / "d").exists()


def test_a_schedule_or_weighting_is_refused_for_reflow(teacher, tmp_path):
    for kw, message in (({"schedule": "karras"}, r"reflow student samples a uniform grid in flow time"),
                        ({"weighting": "edm"}, r"reflow trains the velocity MSE on each pair's line: drop it")):
        with pytest.raises(ValueError, match=message):
            reflow(teacher, tmp_path / "d", **kw)
    assert not (tmp_path / "d").exists()


def test_speed_estimates_take_the_fastest_of_several_calls_not_one_slowed_by_another_process():
    # one timed call that another process slows 20x must not price the budget: the fastest of three counts
    from ebru.pipelines.distill import TIMING_REPEATS, fastest_seconds

    delays = iter([0.2, 0.01, 0.01, 0.01])
    calls = []

    def call():
        d = next(delays)
        calls.append(d)
        time.sleep(d)

    assert TIMING_REPEATS >= 3
    assert fastest_seconds(call) < 0.1 and len(calls) == TIMING_REPEATS
