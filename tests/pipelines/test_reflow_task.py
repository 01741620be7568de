"""The reflow task end to end: a tiny flow teacher, its pairs kept on disk, a student trained a few steps.

The pairs are the teacher's guided ODE samples, stored with a verified index, read back instead of
regenerated, regenerated with a warning when damaged or made otherwise, and resumed chunk by chunk after an
interruption. The student is a package ``ebru.load`` accepts that samples N Euler steps on its grid; bad
teachers and settings are refused in one line each.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save

import ebru.tasks.reflow_pairs as pairs_module
from ebru.data import load_dataset
from ebru.diffusion import SAMPLERS, GaussianMixture, Precond, get_sigmas, make_pairs, reflow_grid
from ebru.diffusion.distill import GridSchedule
from ebru.nets import build_net
from ebru.pipelines import ImagePipeline
from ebru.tasks import TASKS
from ebru.tasks.reflow import ReflowTask
from ebru.tasks.reflow_pairs import INDEX, PairSpec, ensure_pairs
from ebru.train import Trainer, load_config
from ebru.trust import load, write_package

TINY_NET = {"kind": "unet", "channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
            "num_heads": 1, "dropout": 0.0}
FLOW = ["prediction=\"flow\"", "weighting=\"flow\"", "p_mean=0.0", "p_std=1.0"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE", "EBRU_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("EBRU_CACHE", str(tmp_path / "cache"))


def image_folder(root, classes=("bag", "shoe"), per_class=8, size=8):
    g = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 256, (size, size), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def train_teacher(root, *settings):
    """A flow teacher trained 4 steps on 16 8x8 images of 2 classes (sampling guidance 2, ebru's default)."""
    data = image_folder(root / "data")
    cfg = load_config(None, [f"data={json.dumps(str(data))}", *FLOW, "sample_steps=4", "steps=4", "batch_size=8",
                             "warmup_steps=1", "log_every=1", "checkpoint_every=0",
                             "ema_halflife_images=40", "device=\"cpu\"", "tensorboard=false", "license=\"apache-2.0\"",
                             *(f"model.{k}={json.dumps(v)}" for k, v in TINY_NET.items()), *settings])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_AUDIT_LOG", str(root / "audit.jsonl"))
        return Trainer(cfg, root / "run", progress=False).fit()


def reflow_settings(teacher, pairs_dir, /, **table):
    return {"teacher": str(teacher), "quiet": True, "allow_unsigned": True, "student_steps": 2, "pairs": 12,
            "pair_steps": 4, "pair_batch": 5, "pair_chunk": 8, "pairs_dir": str(pairs_dir), **table}


def reflow_cfg(teacher, pairs_dir, /, *settings, **table):
    cfg = load_config(None, ["task=\"reflow\"", "device=\"cpu\"", *FLOW, *settings])
    cfg.distill = reflow_settings(teacher, pairs_dir, **table)
    return cfg


def reflow_task(teacher, pairs_dir, /, **table):
    return ReflowTask(reflow_cfg(teacher, pairs_dir, **table), torch.device("cpu"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_teacher(tmp_path_factory.mktemp("reflow-teacher"))


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """The teacher reflowed for 2 Euler steps: 12 pairs (dpmpp_2m, 4 steps), 3 training steps."""
    root = tmp_path_factory.mktemp("reflow-student")
    cfg = reflow_cfg(teacher, root / "pairs", "steps=3", "batch_size=8", "warmup_steps=1", "log_every=1",
                     "checkpoint_every=0", "ema_halflife_images=40", "tensorboard=false")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_AUDIT_LOG", str(root / "audit.jsonl"))
        return Trainer(cfg, root / "run", progress=False).fit()


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


# ------------------------------------------------------------------------------------------- the student
def test_the_task_is_registered():
    assert TASKS["reflow"] is ReflowTask


def test_the_student_is_a_package_made_for_n_euler_steps_on_its_flow_grid(teacher, student):
    m, t = load(student, quiet=True), load(teacher, quiet=True)
    d, s = m.config["distilled"], m.config["sampling"]
    assert (d["method"], d["steps"], d["sampler"], d["schedule"]) == ("reflow", 2, "euler", "flow")
    assert d["sigmas"] == reflow_grid(2, 80.0).tolist()
    # the guided teacher's pairs: guidance 2 is in the weights, the student samples without guidance on top
    assert d["guidance"] == 2.0 and "guidance_input" not in d
    assert (s["sampler"], s["steps"], s["schedule"], s["guidance"]) == ("euler", 2, "flow", 1.0)
    assert m.config["precond"]["prediction"] == "flow" and m.config["net"] == t.config["net"]
    p = d["pairs"]
    assert (p["count"], p["sampler"], p["steps"], p["schedule"], p["seeds"], p["guidance"], p["time"]) == (
        12, "dpmpp_2m", 4, "karras", [0, 11], 2.0, "uniform")
    assert (d["teacher"]["manifest_sha256"], d["teacher"]["sampler"], d["teacher"]["steps"]) == (
        t.manifest_sha256, "dpmpp_2m", 4)
    # the licence chain: base_model is the teacher, whose signed lineage entry carries its licence
    name = d["teacher"]["name"]
    assert m.card.base_model == (name,) and m.card.license == "apache-2.0"
    assert m.lineage[0]["name"] == name and m.lineage[0]["manifest_sha256"] == t.manifest_sha256
    assert m.manifest.provenance["created_by"] == "ebru distill"
    assert m.manifest.provenance["dataset_hash"] == p["sha256"]
    assert m.config["training"]["steps"] == 3 and m.config["training"]["dataset"] == t.config["training"]["dataset"]
    assert (student.parent / "samples" / "step-0000003.png").is_file()  # the preview: the student's 2 Euler steps


def test_the_student_samples_euler_on_its_grid_one_network_call_per_step(student):
    pipe = ImagePipeline.from_pretrained(student, watermark=False)
    setting = pipe.sampling()
    assert (setting["sampler"], setting["steps"]) == ("euler", 2)
    grid = reflow_grid(2, 80.0)
    assert isinstance(setting["schedule"], GridSchedule) and torch.equal(setting["schedule"].sigmas, grid)
    calls = []
    pipe.denoiser.net.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own defaults: no warning
        images = pipe(2, class_labels=[0, 1], seeds=[5, 6])
    assert calls == [2, 2]  # no classifier-free guidance: one conditional call per step
    noise = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    labels = torch.tensor([0, 1])
    want = SAMPLERS["euler"](lambda x, s: pipe.denoiser(x, s, class_labels=labels), noise * 80.0, grid)
    torch.testing.assert_close(images, want, rtol=1e-6, atol=1e-6)
    with warnings.catch_warnings():  # a reflowed model is an ordinary flow model: other samplers are fine
        warnings.simplefilter("error")
        pipe(1, sampler="heun")


# ------------------------------------------------------------------------------------------- the pairs
def test_the_pairs_are_the_guided_teachers_ode_samples_kept_with_a_verified_index(teacher, student):
    pairs_dir = student.parent.parent / "pairs"
    index = json.loads((pairs_dir / INDEX).read_text(encoding="utf-8"))
    t = load(teacher, quiet=True)
    spec = index["spec"]
    assert (spec["teacher"], spec["sampler"], spec["steps"], spec["schedule"], spec["guidance"]) == (
        t.manifest_sha256, "dpmpp_2m", 4, "karras", 2.0)
    assert (spec["first_seed"], spec["num_classes"], spec["shape"]) == (0, 2, [1, 8, 8])
    assert spec["sigmas"] == get_sigmas("karras", 4, 0.002, 80.0).tolist()
    chunks = index["chunks"]
    assert [(c["start"], c["count"], c["seeds"]) for c in chunks] == [(0, 8, [0, 7]), (8, 4, [8, 11])]
    for c in chunks:
        assert hashlib.sha256((pairs_dir / c["file"]).read_bytes()).hexdigest() == c["sha256"]
    first = load_file(str(pairs_dir / chunks[0]["file"]))
    assert torch.equal(first["class_labels"], torch.arange(8) % 2) and torch.equal(first["seeds"], torch.arange(8))
    # pair i is what ebru samples from the teacher with seed i, class i % 2, at its guidance (dpmpp_2m, 4 steps)
    pipe = ImagePipeline.from_pretrained(teacher, watermark=False)
    for i in (0, 3, 7):
        x = pipe(1, class_labels=[i % 2], seeds=[i], sampler="dpmpp_2m", num_inference_steps=4, schedule="karras")
        torch.testing.assert_close(first["samples"][i:i + 1], x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(first["noise"][i], torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(i)),
                                   rtol=0, atol=0)


def test_kept_pairs_are_read_not_regenerated(teacher, student, monkeypatch):
    pairs_dir = student.parent.parent / "pairs"
    calls = counting(monkeypatch)
    task = reflow_task(teacher, pairs_dir)
    assert calls == []
    assert task.data.content_hash == load(student, quiet=True).config["distilled"]["pairs"]["sha256"]
    assert len(task.data) == 12 and torch.equal(task.data.labels, torch.arange(12) % 2)


def test_the_task_starts_at_the_teacher_and_its_loss_is_the_velocity_mse_on_each_line(teacher, student):
    task = reflow_task(teacher, student.parent.parent / "pairs")
    net, d = task.build()
    weights = load_file(str(teacher / "model.safetensors"))
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    batch = task.draw(6, torch.Generator().manual_seed(3))
    assert set(batch) == {"idx", "sigma"} and batch["sigma"].dtype == torch.float32
    assert float(batch["sigma"].min()) > 0 and float(batch["sigma"].max()) <= 80.0
    # a 4-step teacher's velocity is nearly 0 (its last layer starts at zero), so its paths are already
    # straight and its reflow loss is ~1e-8: move the weights so the check below compares real numbers
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    loss = task.loss(d, batch, slice(1, 5))
    assert float(loss.detach().min()) > 1e-3
    idx, s = batch["idx"][1:5], batch["sigma"][1:5]
    z, x0, y = task.data.noise[idx], task.data.samples[idx], task.data.labels[idx]
    n = z - x0 / 80.0  # the line through ebru's start 80 z
    x_t = (1 - s / (1 + s))[:, None, None, None] * (x0 + s[:, None, None, None] * n)  # (1 - t) x0 + t n
    v_hat = net(x_t, s / (1 + s), class_labels=y)  # the raw network: the flow's velocity
    torch.testing.assert_close(loss, (v_hat - (n - x0)).pow(2).flatten(1).mean(1), rtol=1e-4, atol=0)
    # the loss draws t uniformly up to ebru's start: every pair's line is trained near sigma_max too
    many = task.draw(4000, torch.Generator().manual_seed(0))["sigma"].double()
    assert 0.02 < float((many > 20).double().mean()) < 0.05


def test_a_reflowed_student_reflows_again_and_still_names_the_first_teacher(teacher, student, tmp_path):
    task = reflow_task(student, tmp_path / "pairs3", student_steps=1)
    assert task.guidance.scale == 2.0 and not task.guidance.teacher_guided  # its guidance is in its weights
    assert task.spec.schedule == "flow"  # pairs drawn on its own sampling schedule
    config = task.model_config(type("S", (), {"step": 0, "items_seen": 0, "elapsed": 0.0, "final_loss": None})())
    first = load(teacher, quiet=True)
    assert config["distilled"]["teacher"]["manifest_sha256"] == first.manifest_sha256
    assert config["distilled"]["round_teacher"]["manifest_sha256"] == load(student, quiet=True).manifest_sha256
    with pytest.raises(ValueError, match=r"distilled with guidance 2.0, and its students keep it"):
        reflow_task(student, tmp_path / "pairs4", guidance=3.0)


# ------------------------------------------------------------------------------------------- pair storage
SPEC = PairSpec(teacher="ab" * 32, sampler="dpmpp_2m", steps=4, schedule="karras",
                sigmas=tuple(get_sigmas("karras", 4, 0.002, 80.0).tolist()), guidance=None, shape=(1, 2, 2),
                first_seed=3, num_classes=2)
ORACLE = GaussianMixture.random(dim=4, components=4, classes=2, seed=1)


def direct(n, spec=SPEC):
    """The pairs make_pairs draws for ``spec`` in one call."""
    return make_pairs(ORACLE, n, spec.shape, torch.tensor(spec.sigmas, dtype=torch.float64), spec.sampler,
                      seeds=range(spec.first_seed, spec.first_seed + n), batch=n,
                      cond={"class_labels": torch.arange(n) % spec.num_classes})


def test_pairs_are_stored_in_chunks_and_grow_without_regenerating(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    a = ensure_pairs(tmp_path / "p", SPEC, 10, ORACLE, batch=3, chunk=4)
    assert calls == [4, 4, 2]
    z, x0 = direct(10)
    assert torch.equal(a.noise, z) and torch.equal(a.samples, x0)
    assert torch.equal(a.seeds, torch.arange(3, 13)) and torch.equal(a.labels, torch.arange(10) % 2)
    index = json.loads((tmp_path / "p" / INDEX).read_text(encoding="utf-8"))
    assert index["version"] == 1 and index["spec"] == SPEC.to_json()
    assert [(c["start"], c["count"], c["seeds"]) for c in index["chunks"]] == [(0, 4, [3, 6]), (4, 4, [7, 10]),
                                                                              (8, 2, [11, 12])]
    b = ensure_pairs(tmp_path / "p", SPEC, 10, None)  # read back: the teacher is not needed
    assert calls == [4, 4, 2] and b.content_hash == a.content_hash and torch.equal(b.samples, a.samples)
    c = ensure_pairs(tmp_path / "p", SPEC, 6, None)
    assert torch.equal(c.samples, a.samples[:6]) and c.content_hash != a.content_hash
    d = ensure_pairs(tmp_path / "p", SPEC, 14, ORACLE, chunk=4)  # only the 4 new pairs are made
    assert calls == [4, 4, 2, 4] and torch.equal(d.samples[:10], a.samples)
    assert torch.equal(d.samples, direct(14)[1])
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
        [INDEX, *(c["file"] for c in json.loads((tmp_path / "p" / INDEX).read_text(encoding="utf-8"))["chunks"])])


def test_an_interrupted_generation_resumes_at_the_first_missing_chunk(tmp_path, monkeypatch):
    counting(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        ensure_pairs(tmp_path / "p", SPEC, 10, ORACLE, chunk=4)
    index = json.loads((tmp_path / "p" / INDEX).read_text(encoding="utf-8"))
    assert [c["start"] for c in index["chunks"]] == [0]  # the finished chunk is kept
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted([INDEX, index["chunks"][0]["file"]])
    calls = counting(monkeypatch)
    again = ensure_pairs(tmp_path / "p", SPEC, 10, ORACLE, chunk=4)
    assert calls == [4, 2] and torch.equal(again.samples, direct(10)[1])


def rewrite_chunk(directory, k, tensors=None, blob=None):
    """Replace chunk k's file by other content, with the index's SHA-256 updated to match (a forged chunk)."""
    path = directory / INDEX
    index = json.loads(path.read_text(encoding="utf-8"))
    entry = index["chunks"][k]
    data = blob if blob is not None else save(tensors)
    (directory / entry["file"]).write_bytes(data)
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(index), encoding="utf-8")


@pytest.mark.parametrize(("damage", "message", "regenerated"), [
    ("flip", r"pairs-00000004-\w+\.safetensors ignored and regenerated \(it does not match the SHA-256", [4]),
    ("seeds", r"ignored and regenerated \(its seeds are not those of its pairs\)", [4]),
    ("labels", r"ignored and regenerated \(its class labels are not those of its pairs\)", [4]),
    ("shape", r"regenerated \(its noise tensor is torch.float32 \[4, 4\], not float32 \[4, 1, 2, 2\]\)", [4]),
    ("empty", r"ignored and regenerated \(it holds tensors \[\]\)", [4]),
    ("garbage", r"ignored and regenerated \(.*safetensors", [4]),
    ("missing", r"ignored and regenerated \(.*No such file", [4]),
    ("index", r"reflow pairs in .* ignored and regenerated \(", [4, 4, 2]),
    ("spec", r"ignored and regenerated \(they were made with another guidance, sampler\)", [4, 4, 2]),
])
def test_a_damaged_or_mismatching_pairs_file_is_regenerated_with_one_warning(tmp_path, monkeypatch, damage,
                                                                            message, regenerated):
    d = tmp_path / "p"
    good = ensure_pairs(d, SPEC, 10, ORACLE, chunk=4)
    entry = json.loads((d / INDEX).read_text(encoding="utf-8"))["chunks"][1]
    chunk = load_file(str(d / entry["file"]))
    if damage == "flip":
        data = bytearray((d / entry["file"]).read_bytes())
        data[-1] ^= 1
        (d / entry["file"]).write_bytes(bytes(data))
    elif damage == "seeds":
        rewrite_chunk(d, 1, {**chunk, "seeds": chunk["seeds"] + 1})
    elif damage == "labels":
        rewrite_chunk(d, 1, {**chunk, "class_labels": 1 - chunk["class_labels"]})
    elif damage == "shape":
        rewrite_chunk(d, 1, {**chunk, "noise": chunk["noise"].reshape(4, 4)})
    elif damage == "empty":  # a valid safetensors file without the tensors
        rewrite_chunk(d, 1, blob=b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    elif damage == "garbage":  # refused by the strict reader
        rewrite_chunk(d, 1, blob=b"not a safetensors file at all")
    elif damage == "missing":
        (d / entry["file"]).unlink()
    elif damage == "index":
        (d / INDEX).write_text("{not json", encoding="utf-8")
    spec = PairSpec(**{**SPEC.to_json(), "sigmas": SPEC.sigmas, "shape": SPEC.shape,
                       **({"guidance": 2.0, "sampler": "heun"} if damage == "spec" else {})})
    calls = counting(monkeypatch)
    with pytest.warns(UserWarning, match=message) as rec:
        again = ensure_pairs(d, spec, 10, ORACLE, chunk=4)
    assert len([w for w in rec if "reflow pairs" in str(w.message)]) == 1
    assert all("\n" not in str(w.message) for w in rec)
    assert calls == regenerated
    if damage != "spec":
        assert torch.equal(again.samples, good.samples) and again.content_hash == good.content_hash
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: read back silently
        ensure_pairs(d, spec, 10, None)


def test_missing_pairs_are_not_generated_by_a_reader(tmp_path):
    ensure_pairs(tmp_path / "p", SPEC, 4, ORACLE)
    for kw in ({"teacher": None}, {"teacher": ORACLE, "generate": False}):
        args = {"teacher": kw["teacher"], **({"generate": kw["generate"]} if "generate" in kw else {})}
        with pytest.raises(ValueError, match=r"6 of the 10 reflow pairs are missing; generate them first"):
            ensure_pairs(tmp_path / "p", SPEC, 10, **args)
    with pytest.raises(ValueError, match=r"pair chunk size must be a positive integer"):
        ensure_pairs(tmp_path / "p", SPEC, 4, ORACLE, chunk=0)


# ------------------------------------------------------------------------------------------- bad input
def fake_teacher(path, precond, num_classes=None, random=False, **config):
    """An (untrained) image package: zero weights (velocity 0), or random ones (a class-dependent velocity)."""
    net = {**TINY_NET, "image_size": 8, "in_channels": 1, "out_channels": 1, "num_classes": num_classes}
    g = torch.Generator().manual_seed(0)
    weights = {k: (0.3 * torch.randn(v.shape, generator=g) if random and v.is_floating_point() else torch.zeros_like(v))
               for k, v in build_net(net).state_dict().items()}
    card = "---\nlicense: apache-2.0\nbase_model: null\nintended_use: tests\n---\n# x\n"
    return write_package(path, {"kind": "image-diffusion", "net": net, "image_shape": [1, 8, 8],
                                "num_classes": num_classes, "precond": precond, **config}, weights, card,
                         {"created_by": "tests"})


@pytest.mark.parametrize(("teacher_config", "message"), [
    ({"precond": {"prediction": "edm", "sigma_data": 0.5}},
     r"a 'edm' model, and reflow straightens the paths of flow models \(prediction \"flow\"\); distil it with "
     r"--method progressive or --method consistency"),
    ({"precond": {}}, r"a 'edm' model, and reflow .*--method progressive"),
    ({"precond": {"prediction": "v"}}, r"a 'v' model, and reflow"),
    ({"precond": {"prediction": "flow"}, "distilled": {"method": "progressive", "steps": 2}},
     r"a progressive student, made for its own 2-step grid; reflow its teacher instead"),
    ({"precond": {"prediction": "flow"}, "kind": "text-diffusion"}, r"a 'text-diffusion' model; ebru distill makes"),
])
def test_a_teacher_reflow_cannot_distil_is_refused_in_one_line(tmp_path, teacher_config, message):
    path = fake_teacher(tmp_path / "t", **teacher_config)
    with pytest.raises(ValueError, match=message) as e:
        reflow_task(path, tmp_path / "pairs")
    assert "\n" not in str(e.value) and not (tmp_path / "pairs").exists()


@pytest.mark.parametrize(("table", "message"), [
    ({"pair_samplr": "heun"}, r"unknown distill key 'pair_samplr' \(did you mean 'pair_sampler'\?\)"),
    ({"pair_sampler": "ddpm"}, r"need a deterministic sampler .*'ddpm' is stochastic"),
    ({"pair_sampler": "eulr"}, r"unknown sampler 'eulr' \(did you mean 'euler'"),
    ({"pair_schedule": "karas"}, r"did you mean 'karras'"),
    ({"student_steps": 0}, r"distill.student_steps must be a positive integer, got 0"),
    ({"pairs": 2.5}, r"distill.pairs must be a positive integer"),
    ({"pair_seed": -1}, r"distill.pair_seed must be an integer >= 0"),
    ({"time": "uniformm"}, r"unknown reflow time distribution 'uniformm' \(did you mean 'uniform'"),
    ({"guidance": [1.0, 3.0]}, r"reflow draws its pairs at one guidance scale W; a range \[1.0, 3.0\]"),
    ({"guidance": float("nan")}, r"distill.guidance must be finite"),
    ({"teacher": ""}, r"distill.teacher must name the teacher's model package directory"),
    ({"pairs_dir": 3}, r"distill.pairs_dir must be a path"),
])
def test_bad_settings_are_refused_in_one_line(tmp_path, table, message):
    path = fake_teacher(tmp_path / "t", {"prediction": "flow"}, num_classes=2)
    with pytest.raises(ValueError, match=message) as e:
        reflow_task(path, tmp_path / "pairs", **table)
    assert "\n" not in str(e.value) and not (tmp_path / "pairs").exists()


def test_guidance_for_an_unconditional_teacher_and_images_as_data_are_refused(tmp_path):
    path = fake_teacher(tmp_path / "t", {"prediction": "flow"})
    with pytest.raises(ValueError, match=r"guidance is for class-conditional teachers, and this one has no classes"):
        reflow_task(path, tmp_path / "pairs", guidance=2.0)
    data = load_dataset(str(image_folder(tmp_path / "data")))
    with pytest.raises(ValueError, match=r"trains on its teacher's pairs, not on a data set"):
        ReflowTask(reflow_cfg(path, tmp_path / "pairs"), torch.device("cpu"), data=data)


def test_an_unconditional_teacher_reflows_without_labels(tmp_path):
    path = fake_teacher(tmp_path / "t", {"prediction": "flow"})
    task = reflow_task(path, tmp_path / "pairs", pairs=3, student_steps=1)
    assert task.data.labels is None and task.spec.guidance is None and task.spec.num_classes is None
    # a zero network is the velocity 0: every path stands still, the pair is the start x_T = T z
    torch.testing.assert_close(task.data.samples, task.data.noise * 80.0 / 81.0, rtol=1e-6, atol=1e-6)
    assert torch.equal(task.student_sigmas, torch.tensor([80.0, 0.0], dtype=torch.float64))
    d = task.build()[1]
    assert isinstance(d, Precond) and d.prediction == "flow"


def test_a_class_conditional_teachers_pairs_are_drawn_at_its_guidance(tmp_path):
    """A teacher with random weights (a velocity that depends on the class): the pairs are its samples guided at
    the pairs' scale, not the unguided ones."""
    path = fake_teacher(tmp_path / "t", {"prediction": "flow"}, num_classes=2, random=True,
                        sampling={"guidance": 3.0, "sigma_min": 0.002, "sigma_max": 80.0})
    task = reflow_task(path, tmp_path / "pairs", pairs=4, pair_chunk=4)
    assert task.spec.guidance == 3.0 and task.guidance.teacher_guided
    pipe = ImagePipeline.from_pretrained(path, watermark=False)
    common = {"class_labels": [0, 1, 0, 1], "seeds": [0, 1, 2, 3], "sampler": "dpmpp_2m", "num_inference_steps": 4,
              "schedule": "karras"}
    guided, plain = pipe(4, guidance_scale=3.0, **common), pipe(4, guidance_scale=1.0, **common)
    torch.testing.assert_close(task.data.samples, guided, rtol=1e-5, atol=1e-5)
    assert float((guided - plain).abs().max()) > 0.1
    other = reflow_task(path, tmp_path / "pairs-w1", pairs=4, guidance=1.0)
    torch.testing.assert_close(other.data.samples, plain, rtol=1e-5, atol=1e-5)
    assert not other.guidance.teacher_guided and other.spec.guidance == 1.0
