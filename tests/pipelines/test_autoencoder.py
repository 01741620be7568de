"""Autoencoder packages: load, reconstruct with the training padding, score (the figures ebru eval AE_DIR prints),
and one-line refusals for a package of the wrong kind."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ebru.cli import main
from ebru.data import ImageDataset
from ebru.eval.reconstruction import psnr, rfid, ssim
from ebru.pipelines.autoencoder import evaluate_autoencoder, load_autoencoder, reconstruct
from ebru.train import TrainConfig, Trainer

TINY_AE = {"kind": "autoencoder", "channels": 4, "channel_mult": [1, 2], "latent_channels": 2, "num_res_blocks": 1}


def tiny_dataset(n: int = 16) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 6:22, 8:20] = torch.randint(60, 256, (n, 1, 1, 1), generator=g, dtype=torch.uint8)
    return ImageDataset(images, torch.zeros(n, dtype=torch.long), class_names=["a"], content_hash="0" * 64,
                        source="tiny test set")


def tiny_config(**kw) -> TrainConfig:
    base = dict(task="autoencoder", model=dict(TINY_AE), steps=4, batch_size=4, lr=1e-3, warmup_steps=1, log_every=2,
                checkpoint_every=2, ema_halflife_images=8, device="cpu", tensorboard=False,
                autoencoder={"pad": 2, "kl_weight": 1e-3, "perceptual_weight": 0.1, "scale_images": 8})
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    return Trainer(tiny_config(steps=2), out, dataset=tiny_dataset(), progress=False).fit()


def test_reconstruct_pads_like_training_and_crops_back(ae_dir):
    ae, config = load_autoencoder(ae_dir, quiet=True)
    assert config["pad"] == 2 and not ae.training
    x = tiny_dataset().tensors()[0][:5]
    got = reconstruct(ae, x, pad=2, batch=2)
    with torch.no_grad():
        want = ae.decode(ae.encode(F.pad(x, (2, 2, 2, 2), value=-1.0)).mode())[:, :, 2:30, 2:30].clamp(-1, 1)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want)


def test_evaluate_reports_psnr_ssim_rfid_of_the_reconstructions(ae_dir):
    data = tiny_dataset()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 4))  # FID needs N > D: a small D
    report = evaluate_autoencoder(ae_dir, data=data, n=12, feature_net=net, quiet=True)
    ae, _ = load_autoencoder(ae_dir, quiet=True)
    x = data.tensors()[0][:12]
    r = reconstruct(ae, x, pad=2)
    assert report["images"] == 12 and report["kind"] == "autoencoder" and report["factor"] == 2
    assert report["psnr"] == pytest.approx(float(psnr(x, r).mean()), rel=1e-9)
    assert report["ssim"] == pytest.approx(float(ssim(x, r).mean()), rel=1e-9)
    assert report["rfid"] == pytest.approx(rfid(x, r, net), rel=1e-9) and report["rfid"] > 0
    with pytest.raises(ValueError, match="unknown metric 'fid' for an autoencoder"):
        evaluate_autoencoder(ae_dir, data=data, metrics=("fid",), quiet=True)


def test_ebru_eval_routes_an_autoencoder_package(ae_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", str(ae_dir), "-n", "20", "--metrics", "psnr,ssim", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "SSIM" in text and "rFID" not in text
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["images"] == 20 and report["data"] == "fashion-mnist:test"
    assert main(["eval", str(ae_dir), "--steps", "4"]) == 2
    assert "--steps is for diffusion models" in capsys.readouterr().err


def test_an_image_package_is_refused_where_an_autoencoder_is_expected(tmp_path):
    from ebru.nets import build_net
    from ebru.trust import write_package

    net = {"kind": "unet", "image_size": 8, "in_channels": 1, "out_channels": 1, "channels": 8, "channel_mult": [1],
           "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1}
    card = "---\nlicense: mit\n---\n"
    path = write_package(tmp_path / "m", {"kind": "image-diffusion", "net": net}, build_net(net).state_dict(), card)
    with pytest.raises(ValueError, match=r"config\.json: an image-diffusion package, not an ebru autoencoder"):
        load_autoencoder(path, quiet=True)


def test_a_package_written_before_the_preview_decoder_existed_still_loads(tmp_path):
    """A config.json ``net`` without ``preview_channels`` and weights without ``preview.*`` load as they are."""
    from ebru.nets import build_net
    from ebru.trust import write_package

    net = {**TINY_AE, "image_size": 32, "in_channels": 1, "attention": False, "num_heads": 1, "scale_factor": 0.7}
    weights = build_net(net).state_dict()
    config = {"kind": "autoencoder", "net": net, "pad": 2, "factor": 2, "scale_factor": 0.7,
              "data_image_shape": [1, 28, 28], "latent_shape": [2, 16, 16]}
    path = write_package(tmp_path / "old", config, weights, "---\nlicense: mit\n---\n")
    ae, cfg = load_autoencoder(path, quiet=True)
    assert "preview_channels" not in cfg["net"] and ae.preview is None
    for k, v in weights.items():
        assert torch.equal(ae.state_dict()[k], v), k
    x = tiny_dataset().tensors()[0][:2]
    assert reconstruct(ae, x, pad=2).shape == x.shape
    with pytest.raises(ValueError, match="no preview decoder"):
        ae.decode_preview(torch.zeros(1, 2, 16, 16))


def test_a_package_with_a_preview_decoder_carries_it_in_its_one_weights_file(tmp_path):
    model_dir = Trainer(tiny_config(steps=1, model={**TINY_AE, "preview_channels": 4}), tmp_path,
                        dataset=tiny_dataset(), progress=False).fit()
    assert sorted(p.name for p in model_dir.glob("*.safetensors")) == ["model.safetensors"]
    ae, config = load_autoencoder(model_dir, quiet=True)
    assert config["net"]["preview_channels"] == 4 and ae.preview is not None
    z = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ae.decode_preview(z), ae.preview(z))
    assert "preview decoder" in (model_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
