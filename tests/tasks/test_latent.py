"""Latent diffusion training and packages: the images are encoded once by a verified autoencoder package (flips
too), the denoiser is sized for the latents, the package bundles the autoencoder (hash recorded, licence in the
lineage), ImagePipeline samples in latent space and decodes once, and every wrong pairing is one clear line."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from ebru.data import ImageDataset
from ebru.diffusion import Precond, sample
from ebru.nets import build_net
from ebru.pipelines import ImagePipeline
from ebru.pipelines.evaluate import evaluate_model
from ebru.tasks import TASKS
from ebru.tasks.latent import AUTOENCODER_WEIGHTS, LatentSpace
from ebru.train import TrainConfig, Trainer
from ebru.trust import load, package_dir

TINY_AE = {"kind": "autoencoder", "channels": 4, "channel_mult": [1, 2], "latent_channels": 2, "num_res_blocks": 1}
TINY_NET = {"kind": "unet", "channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
            "num_heads": 1, "dropout": 0.0}
COMMON = dict(batch_size=4, lr=1e-3, warmup_steps=1, log_every=2, checkpoint_every=2, ema_halflife_images=8,
              device="cpu", tensorboard=False)


def dataset(n: int = 16, size: int = 28) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, :, 6:size - 6, 8:size - 9] = torch.randint(60, 256, (n, 1, 1, 1), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.arange(n) % 2, class_names=["a", "b"], content_hash="0" * 64,
                        source="tiny test set")


def train_autoencoder(out, seed: int = 0, license: str = "mit"):
    cfg = TrainConfig.from_dict(dict(task="autoencoder", model=dict(TINY_AE), steps=2, seed=seed, license=license,
                                     autoencoder={"pad": 2, "scale_images": 8}, **COMMON))
    return Trainer(cfg, out, dataset=dataset(), progress=False).fit()


def latent_config(ae_dir, **kw) -> TrainConfig:
    base = dict(task="image", autoencoder=str(ae_dir), model=dict(TINY_NET), steps=2, hflip=True, sigma_data=1.0,
                class_conditional=True, sample_steps=2, **COMMON)
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("EBRU_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("EBRU_AUDIT_LOG", str(tmp_path / "audit.jsonl"))


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    ae = train_autoencoder(tmp_path_factory.mktemp("ae"))
    ld = Trainer(latent_config(ae), tmp_path_factory.mktemp("ld"), dataset=dataset(), progress=False).fit()
    return ae, ld


def test_the_task_trains_on_the_encoded_images_and_their_encoded_flips(packages):
    ae, _ = packages
    task = TASKS["image"](latent_config(ae), torch.device("cpu"), data=dataset(), is_main=False)
    space, _ = LatentSpace.from_autoencoder_package(ae, quiet=True)
    x = dataset().tensors()[0]
    assert space.latent_shape == (2, 16, 16) and space.image_shape == (1, 28, 28)
    net = task.net_config
    assert (net["image_size"], net["in_channels"], net["out_channels"]) == (16, 2, 2)
    idx = torch.tensor([3, 3, 5, 7])
    got = task.clean({"flip": torch.tensor([True, False, False, True])}, slice(0, 4), idx)
    torch.testing.assert_close(got[[1, 2]], space.encode(x[[3, 5]]))
    torch.testing.assert_close(got[[0, 3]], space.encode(x[[3, 7]].flip(-1)))
    assert not torch.allclose(got[0], got[1].flip(-1))  # why the flips are encoded, not flipped
    # encoded once, on first draw, and kept: only the images drawn so far are in the cache
    assert task.latent_cache[False][1].nonzero().flatten().tolist() == [3, 5]
    assert task.latent_cache[True][1].nonzero().flatten().tolist() == [3, 7]
    again = task.clean({}, slice(0, 4), idx)
    torch.testing.assert_close(again[[0, 1]], got[[1, 1]])
    # the scaled latents: scale * mode(E(pad(x)))
    with torch.no_grad():
        want = space.scale * space.autoencoder.encode(F.pad(x[:2], (2,) * 4, value=-1.0)).mode()
    torch.testing.assert_close(task.clean({}, slice(0, 2), torch.tensor([0, 1])), want)


def test_the_package_bundles_the_autoencoder_as_a_verified_component(packages):
    ae, ld = packages
    model, ae_model = load(ld, quiet=True), load(ae, quiet=True)
    rec = model.config["latent"]
    ae_weights = (ae / "model.safetensors").read_bytes()
    assert model.read(AUTOENCODER_WEIGHTS) == ae_weights
    assert rec["weights_sha256"] == hashlib.sha256(ae_weights).hexdigest()
    assert rec["manifest_sha256"] == ae_model.manifest_sha256
    assert rec["autoencoder"] == ae_model.config["net"] and rec["scale_factor"] == ae_model.config["scale_factor"]
    assert rec["pad"] == 2 and rec["latent_shape"] == [2, 16, 16] and model.config["image_shape"] == [1, 28, 28]
    assert model.card.base_model == (rec["name"],)
    assert model.lineage[0]["name"] == rec["name"] and model.lineage[0]["license"] == ae_model.card.license
    assert model.manifest.provenance["components"]["autoencoder"]["digest"] == ae_model.manifest_sha256


def test_the_pipeline_samples_latents_and_decodes_them_once(packages):
    _, ld = packages
    pipe = ImagePipeline.from_pretrained(ld, watermark=False)
    assert pipe.latent is not None and pipe.noise_shape == (2, 16, 16)
    got = pipe(3, class_labels=[0, 1, 0], num_inference_steps=3, sampler="euler", guidance_scale=2.0, seeds=[4, 5, 6])
    model = load(ld, quiet=True)
    net = build_net(model.config["net"])
    net.load_state_dict(model.weights)
    d = Precond(net.eval(), model.config["precond"]["prediction"], model.config["precond"]["sigma_data"])
    z = sample(d, (3, 2, 16, 16), sampler="euler", steps=3, seeds=[4, 5, 6], guidance_scale=2.0,
               uncond={"class_labels": torch.full((1,), -1)}, class_labels=torch.tensor([0, 1, 0]),
               sigma_min=pipe.sampling()["sigma_min"], sigma_max=pipe.sampling()["sigma_max"],
               schedule=pipe.sampling()["schedule"])
    want = LatentSpace.from_package(model).decode(z)
    assert got.shape == (3, 1, 28, 28)
    torch.testing.assert_close(got, want)
    # a live preview decodes latents to images; the watermark lives in the latent noise
    assert pipe.preview(z).shape == (3, 1, 28, 28)
    marked = ImagePipeline.from_pretrained(ld, watermark=bytes(32))
    assert tuple(marked.watermark.shape) == (2, 16, 16)
    assert marked(1, num_inference_steps=2).shape == (1, 1, 28, 28)


def test_pixel_likelihoods_are_refused_for_a_latent_model_before_sampling(packages):
    _, ld = packages
    with pytest.raises(ValueError, match="latent model"):
        evaluate_model(ld, metrics=("nll",), n=1)


def test_an_autoencoder_swapped_into_the_package_is_refused(packages, tmp_path):
    _, ld = packages
    other = train_autoencoder(tmp_path / "other", seed=1)
    bad = tmp_path / "swapped"
    shutil.copytree(ld, bad)
    (bad / AUTOENCODER_WEIGHTS).write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(Exception, match=r"autoencoder\.safetensors"):  # the manifest no longer matches
        ImagePipeline.from_pretrained(bad, watermark=False)
    package_dir(bad)  # re-hashed: the manifest is happy, the recorded autoencoder is not
    with pytest.raises(ValueError, match=r"does not match the autoencoder .* recorded in config\.json"):
        ImagePipeline.from_pretrained(bad, watermark=False)


def test_wrong_pairings_and_sizes_are_one_line_errors(packages, tmp_path):
    ae, ld = packages
    with pytest.raises(ValueError, match="an autoencoder package, not a diffusion model"):
        ImagePipeline.from_pretrained(ae, watermark=False)
    with pytest.raises(ValueError, match="an image-diffusion package, not an ebru autoencoder"):
        TASKS["image"](latent_config(ld), torch.device("cpu"), data=dataset(), is_main=False)
    with pytest.raises(ValueError, match=r"image size 27x27 \(padded by 2\) is not divisible by the autoencoder's "
                                         r"factor f=2"):
        TASKS["image"](latent_config(ae), torch.device("cpu"), data=dataset(size=27), is_main=False)
    with pytest.raises(ValueError, match="was trained on 1x28x28 images"):
        TASKS["image"](latent_config(ae), torch.device("cpu"), data=dataset(size=24), is_main=False)
    with pytest.raises(ValueError, match="no such autoencoder package directory"):
        latent_config(tmp_path / "nowhere").validate()
    with pytest.raises(ValueError, match="latent diffusion is for tasks image and text2image"):
        TrainConfig.from_dict(dict(task="text", autoencoder=str(ae))).validate()
    with pytest.raises(ValueError, match=r"model\.in_channels = 1 but the latents have in channels 2"):
        TASKS["image"](latent_config(ae, model={**TINY_NET, "in_channels": 1}), torch.device("cpu"),
                       data=dataset(), is_main=False)


def test_the_card_names_the_autoencoder_and_the_config_is_strict_json(packages):
    _, ld = packages
    card = (ld / "MODEL_CARD.md").read_text()
    rec = json.loads((ld / "config.json").read_text())["latent"]
    assert f'  - "{rec["name"]}"' in card and "latent space of the autoencoder" in card
