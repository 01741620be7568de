"""Text to image end to end on a tiny captioned set: train, export, load (encoder verified), sample, CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from ebru.cli import main
from ebru.data import CaptionedImages
from ebru.encoders import EncoderError
from ebru.pipelines import ImagePipeline, TextToImagePipeline
from ebru.tasks.text2image import TextToImageTask
from ebru.train import TrainConfig, Trainer

TINY_NET = {"kind": "unet", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
            "attention_resolutions": [4], "num_heads": 2, "dropout": 0.0}


def tiny_captioned(n: int = 16) -> CaptionedImages:
    """Red and blue 8x8 squares; red ones carry two captions, blue ones one."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    captions = []
    for i in range(n):
        red = i % 2 == 0
        images[i, 0 if red else 2, 2:6, 2:6] = 255
        captions.append(("a red square", "a crimson block") if red else ("a blue square",))
    return CaptionedImages(images, captions, content_hash="1" * 64, source="tiny captioned squares")


def tiny_config(**kw) -> TrainConfig:
    base = dict(task="text2image", data="unused", model=dict(TINY_NET), steps=4, batch_size=8, lr=1e-3,
                warmup_steps=2, log_every=2, checkpoint_every=0, sample_steps=2, ema_halflife_images=40,
                device="cpu", tensorboard=False, cond_dropout=0.25, sample_prompts=["a red square"])
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_CACHE", str(out / "cache"))
        trainer = Trainer(tiny_config(), out / "run", dataset=tiny_captioned(), progress=False)
        model = trainer.fit()
    return trainer, model


def test_task_draws_captions_of_the_drawn_images_and_drops_to_the_empty_prompt(trained):
    trainer, _ = trained
    task: TextToImageTask = trainer.task
    g = torch.Generator().manual_seed(3)
    batch = task.draw(4000, g)
    captions = ["", "a red square", "a crimson block", "a blue square"]
    assert task.encoder.name == "all-MiniLM-L6-v2"
    # row 0 of the encodings is the empty prompt, and row r is the encoding of captions[r]
    ref = task.encoder.encode(captions)
    torch.testing.assert_close(task.encodings.pooled, ref.pooled, rtol=0, atol=1e-5)
    drawn = [captions[r] for r in batch["caption"].tolist()]
    for i, cap, drop in zip(batch["idx"].tolist(), drawn, batch["drop"].tolist(), strict=True):
        if drop:
            assert cap == ""
        else:
            assert cap in (("a red square", "a crimson block") if i % 2 == 0 else ("a blue square",))
    kept_red = [c for c, i, d in zip(drawn, batch["idx"].tolist(), batch["drop"].tolist(), strict=True)
                if i % 2 == 0 and not d]
    share = kept_red.count("a crimson block") / len(kept_red)
    assert abs(share - 0.5) < 0.05  # one of each image's captions, uniformly
    assert abs(batch["drop"].float().mean().item() - 0.25) < 0.03


def test_package_records_the_encoder_and_loads_only_with_a_matching_one(trained, tmp_path):
    _, model = trained
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    assert config["conditioning"] == "text" and config["net"]["cond_dim"] == 384
    assert config["net"]["pooled_dim"] == 384 and config["num_classes"] is None
    digest = config["text_encoder"]["digest"]
    assert digest.startswith("sha256:") and digest in json.dumps(manifest)
    card = (model / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "text-to-image" in card and digest in card
    with pytest.raises(ValueError, match="text-to-image model"):
        ImagePipeline.from_pretrained(model, watermark=False)


def test_pipeline_seeds_are_per_sample_and_guidance_uses_the_negative_prompt(trained):
    _, model = trained
    pipe = TextToImagePipeline.from_pretrained(model, allow_unsigned=True, watermark=False)
    a = pipe(["a red square", "a blue square"], n=2, seeds=[5, 6, 7, 8], num_inference_steps=3)
    assert a.shape == (4, 3, 8, 8)
    alone = pipe("a blue square", n=1, seeds=[7], num_inference_steps=3)
    torch.testing.assert_close(a[2:3], alone, rtol=0, atol=1e-5)
    # guidance 1 is the plain conditional model: the negative prompt changes nothing ...
    c1 = pipe("a red square", seeds=[1], guidance_scale=1.0, num_inference_steps=3)
    n1 = pipe("a red square", negative_prompt="a blue square", seeds=[1], guidance_scale=1.0, num_inference_steps=3)
    torch.testing.assert_close(c1, n1, rtol=0, atol=0)
    # ... and at guidance 0 the result is the (negative) unconditional branch alone
    u = pipe("a blue square", seeds=[1], guidance_scale=1.0, num_inference_steps=3)
    n0 = pipe("a red square", negative_prompt="a blue square", seeds=[1], guidance_scale=0.0, num_inference_steps=3)
    torch.testing.assert_close(n0, u, rtol=0, atol=1e-5)


def test_pipeline_bad_input_is_one_line(trained):
    _, model = trained
    pipe = TextToImagePipeline.from_pretrained(model, allow_unsigned=True, watermark=False)
    with pytest.raises(ValueError, match="give a prompt, not a class"):
        pipe("a red square", class_labels=1)
    with pytest.raises(ValueError, match="prompt must be a string"):
        pipe(3)
    with pytest.raises(ValueError, match="2 negative prompts for 3 prompts"):
        pipe(["a", "b", "c"], negative_prompt=["x", "y"])
    with pytest.warns(UserWarning, match="empty prompt"):
        pipe("", num_inference_steps=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pipe(" ".join(["red"] * 60), num_inference_steps=2)
    assert any("dropped" in str(w.message) for w in seen)


def test_an_encoder_whose_digest_differs_from_the_recorded_one_is_refused(trained, monkeypatch):
    _, model = trained
    import dataclasses

    from ebru.pipelines import text2image
    from ebru.pipelines.image import load_image_model

    def changed(model_dir, **kw):
        m = load_image_model(model_dir, **kw)
        config = {**m.config, "text_encoder": {**m.config["text_encoder"], "digest": "sha256:" + "0" * 64}}
        return dataclasses.replace(m, config=config)

    monkeypatch.setattr(text2image, "load_image_model", changed)
    with pytest.raises(EncoderError, match="0000000000"):
        TextToImagePipeline.from_pretrained(model, allow_unsigned=True, watermark=False)


def test_cli_sample_with_prompts_and_the_wrong_condition(trained, tmp_path, capsys):
    _, model = trained
    grid, out = tmp_path / "g.png", tmp_path / "imgs"
    code = main(["sample", str(model), "--prompt", "a red square", "--prompt", "a blue square", "-n", "2",
                 "--steps", "2", "--grid", str(grid), "--out-dir", str(out), "--negative-prompt", "noise"])
    assert code == 0, capsys.readouterr().err
    assert grid.is_file()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["sample-a_blue_square-seed0002.png", "sample-a_blue_square-seed0003.png",
                     "sample-a_red_square-seed0000.png", "sample-a_red_square-seed0001.png"]
    capsys.readouterr()
    assert main(["sample", str(model), "--class", "1", "--grid", str(grid)]) == 2
    assert "give --prompt" in capsys.readouterr().err
    assert main(["sample", str(model), "--grid", str(grid)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ebru: error")]
    assert len(errors) == 1 and "text-to-image model: give --prompt" in errors[0]


def test_cli_prompt_on_a_class_model_is_refused(tmp_path, capsys):
    from tests.train.test_trainer import tiny_config as class_config
    from tests.train.test_trainer import tiny_dataset

    model = Trainer(class_config(steps=2, checkpoint_every=0), tmp_path / "run", dataset=tiny_dataset(),
                    progress=False).fit()
    assert main(["sample", str(model), "--prompt", "a red square", "--grid", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "--prompt needs a text-to-image model" in err and "class-conditional" in err


def test_guidance_interval_guides_only_inside_it(trained, tmp_path, capsys):
    _, model = trained
    pipe = TextToImagePipeline.from_pretrained(model, allow_unsigned=True, watermark=False)
    call = {"seeds": [3], "num_inference_steps": 3}
    guided = pipe("a red square", guidance_scale=4.0, **call)
    plain = pipe("a red square", guidance_scale=1.0, **call)
    assert (guided - plain).abs().amax() > 1e-6
    # an interval holding every sigma of the schedule is plain guidance; one holding none is no guidance
    torch.testing.assert_close(pipe("a red square", guidance_scale=4.0, guidance_interval=(0.0, 1e3), **call),
                               guided, rtol=0, atol=1e-6)
    torch.testing.assert_close(pipe("a red square", guidance_scale=4.0, guidance_interval=(0.0, 1e-4), **call),
                               plain, rtol=0, atol=1e-6)
    grid = tmp_path / "g.png"
    assert main(["sample", str(model), "--prompt", "a", "--steps", "2", "-n", "1", "--grid", str(grid),
                 "--guidance-interval", "0.3,5"]) == 0
    capsys.readouterr()
    assert main(["sample", str(model), "--prompt", "a", "--grid", str(grid), "--guidance-interval", "5,0.3"]) == 2
    assert "expected LO < HI" in capsys.readouterr().err
