"""Text jobs end to end: the text quickstart and a text model's evaluation report.

``ebru text quickstart`` and ``ebru text eval`` print what these return::

    from ebru.pipelines.text import evaluate_text_model, run_text_quickstart

    r = run_text_quickstart("ebru-text-quickstart")   # trains (or resumes) about 7 minutes on 2 CPU cores
    print(r["text"], r["bpc"]["bpc"])
    report = evaluate_text_model(r["model"])          # held-out bits/char, sample entropy, tokens/s
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ebru.text import TextModel, load_corpus
from ebru.text.metrics import bits_per_char, generative_perplexity, tokens_per_second, unigram_entropy
from ebru.train import Trainer, load_config
from ebru.train.checkpoint import list_checkpoints

from .quickstart import check_loadable_once_trained

QUICKSTART_RECIPE = "text_quickstart"
QUICKSTART_LENGTH = 200
QUICKSTART_INFILL = "It is a truth [25] that a single man in possession of a good fortune, must be in want of a wife."


def evaluate_text_model(model_dir: str | Path, *, judge: str | Path | None = None, windows: int = 64,
                        samples: int = 4, speed_length: int = 128, speed_steps: int = 32, num_samples: int = 8,
                        device: str = "cpu", progress: bool = True, **load_options: Any) -> dict[str, Any]:
    """Held-out bits per character, sample entropy (and generative perplexity under ``judge``), tokens/s."""
    model = TextModel.from_pretrained(model_dir, device=device, **load_options)
    training = model.config.get("training", {})
    corpus = load_corpus(training.get("config", {}).get("data") or training.get("corpus", "austen"))
    bpc = bits_per_char(model, corpus.held_out_text, windows=windows, samples=samples, progress=progress)
    length = min(speed_length, model.context)
    steps = min(speed_steps, length) if model.process.uses_steps else None
    gen = model.generate(num_samples, length, steps=steps, seeds=0)
    result: dict[str, Any] = {
        "model": str(model_dir), "kind": model.kind, "held_out": corpus.held_out_name,
        "bpc": bpc["bpc"], "bpc_is_bound": bpc["bound"], "eval": bpc,
        "samples": {"n": num_samples, "length": length, "steps": steps or length,
                    "decoder": model.config.get("sampling", {}).get("decoder"), "gumbel": "float64",
                    "entropy_bits": unigram_entropy(gen.tokens), "example": gen.texts[0]},
        "tokens_per_s": {f"batch_{b}": tokens_per_second(model, b, length, steps=steps) for b in (1, 16)},
    }
    result["tokens_per_s"]["length"] = length
    result["tokens_per_s"]["steps"] = steps or length
    if judge is not None:
        judge_model = TextModel.from_pretrained(judge, device=device, **load_options)
        result["samples"]["gen_ppl"] = generative_perplexity(judge_model, gen.texts)
        result["samples"]["judge"] = str(judge)
    return result


def run_text_quickstart(out: str | Path = "ebru-text-quickstart", overrides: list[str] | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the quickstart masked-diffusion model on Austen; generate, show the steps, infill."""

    t0 = time.time()
    out = Path(out)
    cfg = load_config(QUICKSTART_RECIPE, overrides)
    check_loadable_once_trained(cfg, "ebru text quickstart")
    resume = bool(list_checkpoints(out / "checkpoints"))
    trainer = Trainer(cfg, out, resume=resume, progress=progress)
    trainer.fit()
    model = TextModel.from_pretrained(out / "model", quiet=True)
    frames: list[list[int]] = []
    length = min(QUICKSTART_LENGTH, model.context)
    # Ancestral (random-order) decoding: on a small character model, confidence-ordered decoding
    # reveals the easy characters (spaces) first and collapses into them.
    gen = model.generate(1, length, steps=length // 4, decoder="ancestral", seeds=1, top_p=0.9,
                         callback=lambda info: frames.append(info["tokens"][0].tolist()))
    infill = model.infill(QUICKSTART_INFILL, steps=25, decoder="ancestral", seed=0, top_p=0.9)
    bpc = bits_per_char(model, trainer.data.held_out_text, windows=16, samples=2)
    t = model.config["training"]
    return {"model": out / "model", "text": gen.texts[0], "frames": frames, "length": length, "nfe": gen.nfe,
            "infill": infill, "bpc": bpc,
            "held_out": trainer.data.held_out_name, "steps": t["steps"], "minutes": t["minutes"],
            "final_loss": t["final_loss"], "tokenizer": model.tokenizer, "mask_id": model.process.mask_id,
            "log": out / "log.csv", "seconds": time.time() - t0}
