"""The Trainer: exact resume, device/accumulation independence, atomic checkpoints, export round trip."""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ebru.data import ImageDataset
from ebru.train import TrainConfig, Trainer, load_config
from ebru.train import checkpoint as ckpt
from ebru.train.config import apply_overrides, parse_value

TINY_NET = {"kind": "unet", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
            "attention_resolutions": [4], "num_heads": 2, "dropout": 0.1}


def tiny_dataset(n: int = 48, classes: int = 3) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ImageDataset(images, labels, class_names=[f"c{i}" for i in range(classes)], content_hash="0" * 64,
                        source="tiny test set")


def tiny_config(**kw) -> TrainConfig:
    base = dict(model=dict(TINY_NET), steps=6, batch_size=8, lr=1e-3, warmup_steps=2, log_every=2,
                checkpoint_every=3, sample_steps=2, ema_halflife_images=40, device="cpu", hflip=True)
    base.update(kw)
    return TrainConfig.from_dict(base)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}


def test_resume_is_bit_exact(tmp_path):
    data = tiny_dataset()
    full = Trainer(tiny_config(), tmp_path / "a", dataset=data, progress=False)
    losses_full = [full.train_step() for _ in range(6)]

    part = Trainer(tiny_config(), tmp_path / "b", dataset=data, progress=False)
    losses_b = [part.train_step() for _ in range(3)]
    part.save_checkpoint()
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    resumed = Trainer(tiny_config(), tmp_path / "b", resume=True, dataset=data, progress=False)
    assert resumed.step == 3
    losses_b += [resumed.train_step() for _ in range(3)]
    assert losses_b == losses_full
    for k, v in params(full).items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    for k, v in full.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k]), k


def test_gradient_accumulation_matches_full_batch(tmp_path):
    data = tiny_dataset()
    a = Trainer(tiny_config(model={**TINY_NET, "dropout": 0.0}), tmp_path / "a", dataset=data, progress=False)
    b = Trainer(tiny_config(model={**TINY_NET, "dropout": 0.0}, batch_per_device=2), tmp_path / "b",
                dataset=data, progress=False)
    assert b.accum == 4
    la = [a.train_step() for _ in range(3)]
    lb = [b.train_step() for _ in range(3)]
    assert la == pytest.approx(lb, rel=1e-5)
    for k, v in params(a).items():
        torch.testing.assert_close(v, b.net.state_dict()[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_a_non_finite_gradient_never_reaches_the_weights(tmp_path, grad_clip):
    t = Trainer(tiny_config(grad_clip=grad_clip, model={**TINY_NET, "dropout": 0.0}), tmp_path, dataset=tiny_dataset(),
                progress=False)
    t.train_step()
    real_loss = t.task.loss
    t.task.loss = lambda *a: real_loss(*a) * float("nan")  # every gradient NaN for one step
    t.train_step()
    t.task.loss = real_loss
    t.train_step()
    # The NaN step is a step with zero gradients: the twin run below, whose second step has exactly zero
    # gradients (loss * 0), ends with the same weights, EMA and optimiser state, bit for bit.
    twin = Trainer(tiny_config(grad_clip=grad_clip, model={**TINY_NET, "dropout": 0.0}), tmp_path / "twin",
                   dataset=tiny_dataset(), progress=False)
    twin.train_step()
    twin.task.loss = lambda *a: real_loss(*a) * 0.0
    twin.train_step()
    twin.task.loss = real_loss
    twin.train_step()
    for k, v in params(t).items():
        assert torch.isfinite(v).all() and torch.equal(v, twin.net.state_dict()[k]), k
    for k, v in t.ema.state_dict().items():
        assert torch.equal(v, twin.ema.state_dict()[k]), k
    for p, q in zip(t.net.parameters(), twin.net.parameters()):
        for key, value in t.opt.state[p].items():
            assert torch.isfinite(value).all() and torch.equal(value, twin.opt.state[q][key]), key


def test_fit_writes_checkpoints_log_samples_and_model(tmp_path):
    from ebru.pipelines.image import ImagePipeline

    t = Trainer(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False)
    model_dir = t.fit()
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["net"] == {"kind": "unet", **TINY_NET, "image_size": 8, "in_channels": 1, "out_channels": 1,
                             "num_classes": 3}  # the recipe's network, sized by the data
    assert config["class_names"] == ["c0", "c1", "c2"] and config["image_shape"] == [1, 8, 8]
    assert (config["training"]["steps"], config["training"]["images_seen"]) == (6, 48)
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert card.startswith("---\nlicense: mit") and "tiny test set" in card
    assert [p[1] for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [3, 6]
    rows = (tmp_path / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,images,loss") and len(rows) == 4
    # the preview: one row of 8 per class, 8x8 tiles with 2-pixel padding scaled 3x, the label margin and the title
    with Image.open(tmp_path / "samples" / "step-0000006.png") as preview:
        assert preview.size == (110 + 3 * (8 * 10 + 2), 24 + 3 * (3 * 10 + 2))
    # The exported EMA weights load into a pipeline and generate the configured shape.
    pipe = ImagePipeline.from_pretrained(model_dir, watermark=False)
    x = pipe(3, class_labels=["c0", 1, "C2"], num_inference_steps=2, seeds=[1, 2, 3])
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    # seeds are per sample: image 1 alone (class 1, seed 2) is the batch's image 1
    torch.testing.assert_close(pipe(1, class_labels=["c1"], num_inference_steps=2, seeds=[2]), x[1:2],
                               rtol=0, atol=1e-5)
    for k, v in t.ema.state_dict().items():
        torch.testing.assert_close(pipe.denoiser.net.state_dict()[k].float(), v)
    with pytest.raises(ValueError, match="unknown class 'nope'"):
        pipe(1, class_labels="nope")
    # Without --resume a second run refuses to overwrite the checkpoints.
    with pytest.raises(ValueError, match="--resume"):
        Trainer(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False)


def test_time_budget_stops_cleanly(tmp_path):
    t = Trainer(tiny_config(steps=10_000, time_budget=0.002), tmp_path, dataset=tiny_dataset(), progress=False)
    t.fit()
    assert 0 < t.step < 10_000
    # the model written is the run as far as it went: its step count and its EMA weights
    config = json.loads((tmp_path / "model" / "config.json").read_text(encoding="utf-8"))
    assert config["training"]["steps"] == t.step and config["training"]["images_seen"] == 8 * t.step
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert saved.keys() == t.ema.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in t.ema.state_dict().items())


def test_interrupted_save_leaves_previous_checkpoint(tmp_path):
    t = Trainer(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False)
    t.train_step()
    t.save_checkpoint()
    # A save killed half-way leaves a .tmp directory: it is ignored, the previous checkpoint loads.
    (tmp_path / "checkpoints" / "ckpt-00000002.tmp").mkdir()
    (tmp_path / "checkpoints" / "ckpt-00000002.tmp" / "model.safetensors").write_bytes(b"partial")
    state = ckpt.load_latest(tmp_path / "checkpoints")
    assert state["state"]["step"] == 1
    # A damaged newest checkpoint falls back to the one before.
    t.train_step()
    t.save_checkpoint()
    (tmp_path / "checkpoints" / "ckpt-00000002" / "ema.safetensors").write_bytes(b"garbage")
    assert ckpt.load_latest(tmp_path / "checkpoints")["state"]["step"] == 1


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    t = Trainer(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False)
    t.train_step()
    t.save_checkpoint()

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", no_space)
    t.train_step()
    with pytest.raises(OSError, match=r"No space left on device.*step 1 is kept"):
        t.save_checkpoint()
    assert [p[1] for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [1]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_config_errors_and_overrides(tmp_path):
    with pytest.raises(ValueError, match=r"unknown training config key 'stpes'.*did you mean 'steps'"):
        TrainConfig.from_dict({"stpes": 3})
    d = apply_overrides({"model": {"channels": 8}}, ["lr=2e-4", "model.channels=32", "data=my folder", "hflip=true"])
    assert d == {"model": {"channels": 32}, "lr": 2e-4, "data": "my folder", "hflip": True}
    assert parse_value("[1, 2]") == [1, 2]
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(FileNotFoundError, match=r"built-in recipe: .*quickstart"):
        load_config("no-such-config")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    cfg = load_config("quickstart", ["steps=7"])
    assert cfg.steps == 7 and cfg.model["kind"] == "unet"
    with pytest.raises(ValueError, match=r"steps must be a positive integer"):
        load_config("quickstart", ["steps=0"])


def test_unknown_model_key_names_nearest(tmp_path):
    with pytest.raises(ValueError, match="channels"):
        Trainer(tiny_config(model={**TINY_NET, "chanels": 8}), tmp_path, dataset=tiny_dataset(), progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str, world: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    t = Trainer(tiny_config(model={**TINY_NET, "dropout": 0.0}), out, dataset=tiny_dataset(), progress=False)
    for _ in range(3):
        t.train_step()
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in t.net.state_dict().items()}, os.path.join(out, "params.safetensors"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    single = Trainer(tiny_config(model={**TINY_NET, "dropout": 0.0}), tmp_path / "one", dataset=tiny_dataset(),
                     progress=False)
    for _ in range(3):
        single.train_step()
    (tmp_path / "two").mkdir()
    for attempt in range(3):  # the free port can be taken between probing and binding: retry on a new one
        try:
            mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path / "two"), 2), nprocs=2, join=True)
            break
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            if attempt == 2:
                raise
    got = load_file(str(tmp_path / "two" / "params.safetensors"))
    for k, v in single.net.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5)


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False).fit()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]


def test_cpu_training_flushes_subnormal_floats(tmp_path):
    """Subnormals (which a trained attention produces) would take x86's slow path; the Trainer turns them off."""
    supported = torch.set_flush_denormal(False)  # True where the CPU has the flag (x86 with SSE3)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal number, 1.18e-38
    try:
        assert float(tiny * 1.0) > 0
        Trainer(tiny_config(), tmp_path, dataset=tiny_dataset(), progress=False)
        assert float(tiny * 1.0) == (0.0 if supported else float(tiny))
    finally:
        torch.set_flush_denormal(False)


def test_compiled_training_matches_eager(tmp_path):
    # compile = true compiles the training pass only: same losses as eager (to float rounding),
    # and the checkpoints hold the plain module's keys (no "_orig_mod." prefix), so resume works
    data = tiny_dataset()
    eager = Trainer(tiny_config(steps=3), tmp_path / "e", dataset=data, progress=False)
    compiled = Trainer(tiny_config(steps=3, compile=True), tmp_path / "c", dataset=data, progress=False)
    for _ in range(2):
        assert compiled.train_step() == pytest.approx(eager.train_step(), rel=1e-4)
    compiled.save_checkpoint()
    resumed = Trainer(tiny_config(steps=3, compile=True), tmp_path / "c", resume=True, dataset=data, progress=False)
    assert resumed.step == 2 and set(resumed.net.state_dict()) == set(eager.net.state_dict())
    with pytest.raises(ValueError, match="compile must be true or false"):
        tiny_config(compile="yes")


def test_bf16_autocast_trains_on_cpu(tmp_path):
    # the GPU recipes train under bf16 autocast; the same path runs on a CPU, so dtype slips show here
    data = tiny_dataset()
    fp32 = Trainer(tiny_config(), tmp_path / "a", dataset=data, progress=False)
    bf16 = Trainer(tiny_config(precision="bf16"), tmp_path / "b", dataset=data, progress=False)
    for _ in range(2):
        want, got = fp32.train_step(), bf16.train_step()
        assert got == pytest.approx(want, rel=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.net.parameters())
    assert all(v.dtype == torch.float32 for v in bf16.ema.state_dict().values() if v.is_floating_point())


SD = 0.7  # not the default 0.5, so a weighting (or the preconditioning) that dropped sigma_data would show
WEIGHT = {  # lambda(sigma) of each weighting in closed form (ebru.diffusion.loss), sigma_data = SD, gamma = 5
    "edm": lambda s: (s**2 + SD**2) / (s * SD) ** 2,
    "snr": lambda s: s**-2,
    "min_snr": lambda s: (s**-2).clamp(max=5.0),
    "v": lambda s: s**-2 + 1,
    "uniform": lambda s: torch.ones_like(s),
    "flow": lambda s: ((1 + s) / s) ** 2,
}


@pytest.mark.parametrize("weighting", sorted(WEIGHT))
def test_every_loss_weighting_trains(tmp_path, weighting):
    """Each registered weighting gets the run's options it takes (and no others): the first loss is the closed form.

    The untrained network outputs exactly 0 (zero-initialised output layer), so EDM's Denoiser is
    D(x, sigma) = c_skip x with c_skip = SD^2 / (sigma^2 + SD^2), and the batch's loss is
    mean_i lambda(sigma_i) mean |c_skip(sigma_i) (x0_i + sigma_i n_i) - x0_i|^2, over the batch the task draws.
    """
    from ebru.diffusion import WEIGHTINGS

    assert set(WEIGHT) == set(WEIGHTINGS)
    trainer = Trainer(tiny_config(weighting=weighting, sigma_data=SD), tmp_path, dataset=tiny_dataset(),
                      progress=False)
    g = torch.Generator()
    g.set_state(trainer.gen.get_state())
    batch = trainer.task.draw(8, g)  # the draw the step is about to make
    loss = trainer.train_step()
    x0 = trainer.task.images[batch["idx"]].double()
    x0 = torch.where(batch["flip"][:, None, None, None], x0.flip(-1), x0)
    s = batch["sigma"].double()
    c_skip = SD**2 / (s**2 + SD**2)
    x = x0 + s[:, None, None, None] * batch["noise"].double()
    err = (c_skip[:, None, None, None] * x - x0).square().flatten(1).mean(1)
    assert loss == pytest.approx(float((WEIGHT[weighting](s) * err).mean()), rel=1e-5)


@pytest.mark.parametrize(("licence", "why"), [("nope", "is not in"), ("cc-by-nc-4.0", "is denied by")])
def test_a_licence_the_policy_refuses_stops_the_run_before_it_starts(tmp_path, monkeypatch, licence, why):
    """The model would be refused by ebru.load: the run is refused first, and nothing is written."""
    monkeypatch.delenv("EBRU_LICENSE_POLICY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the built-in policy
    with pytest.raises(ValueError, match=rf"license '{licence}' {why} the licence policy .*--set license=apache-2.0"):
        Trainer(tiny_config(license=licence), tmp_path / "run", dataset=tiny_dataset(), progress=False)
    assert not (tmp_path / "run").exists()
    policy = tmp_path / "policy.toml"
    policy.write_text('unknown = "allow"\n', encoding="utf-8")
    monkeypatch.setenv("EBRU_LICENSE_POLICY", str(policy))  # an organisation's policy that knows "nope" decides
    Trainer(tiny_config(license="nope", steps=1), tmp_path / "ok", dataset=tiny_dataset(), progress=False)
