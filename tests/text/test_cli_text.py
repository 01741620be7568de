"""`ebru text ...`: generation, infilling and evaluation from a model directory; bad input is one line and exit 2."""

from __future__ import annotations

import json
import re

import pytest

from ebru.cli import main
from ebru.text import TextModel

from .helpers import ALPHABET, save_tiny


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {kind: save_tiny(root / kind, kind) for kind in ("masked", "ar", "block", "uniform")}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", ["masked", "ar", "block", "uniform"])
def test_generate(capsys, model_dirs, kind):
    steps = [] if kind == "ar" else ["--steps", "4"]  # an AR model takes one step per token: --steps is refused
    code, out, err = run(capsys, "text", "generate", str(model_dirs[kind]), "--prompt", "abc", "--length", "12",
                         *steps, "-n", "2", "--top-k", "5")
    assert code == 0 and re.search(r"\(2 x 12 tokens, \d+ network calls, .* tokens/s\)", err), err
    # stdout is exactly the two samples under their headings: the prompt, then 12 one-character tokens each
    head1, head2 = "--- sample 1 (seed 0)\n", "\n--- sample 2 (seed 1)\n"
    assert out.startswith(head1) and out[len(head1) + 15:].startswith(head2)
    assert len(out) == len(head1) + len(head2) + 2 * 15 + 1
    texts = [out[len(head1):len(head1) + 15], out[-16:-1]]
    assert all(t.startswith("abc") and set(t) <= set(ALPHABET) for t in texts), texts
    if kind == "masked":  # and they are the library's samples for these settings (seeds 0, 1; top-k 5)
        model = TextModel.from_pretrained(model_dirs[kind], quiet=True)
        assert texts == model.generate(2, 12, "abc", steps=4, seeds=0, top_k=5).texts


def test_generate_shows_steps_and_infill_marks(capsys, model_dirs):
    code, out, _ = run(capsys, "text", "generate", str(model_dirs["masked"]), "--length", "10", "--steps", "5",
                       "--show-steps", "3", "--decoder", "ancestral")
    assert code == 0 and out.count("[step") == 3
    code, out, _ = run(capsys, "text", "infill", str(model_dirs["masked"]), "--text", "abc [4] def", "--mark")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("abc ") and lines[0].endswith(" def") and len(lines[0]) == 12
    assert lines[1].startswith("abc [") and lines[1].endswith("] def")


@pytest.mark.parametrize("argv, message", [
    (["generate", "{masked}", "--prompt", "a" * 40], r"longer than the model's context of 32"),
    (["generate", "{masked}", "--prompt", "abc", "--length", "30"], "more than the model's context of 32"),
    (["generate", "{masked}", "--prompt", "Zebra"], "outside this model's vocabulary"),
    (["generate", "{masked}", "--length", "0"], r"--length: must be a positive integer, got 0"),
    (["generate", "{masked}", "--length", "8", "--steps", "0"], r"--steps: must be a positive integer, got 0"),
    (["generate", "{masked}", "--length", "8", "--steps", "-3"], r"--steps: must be a positive integer, got -3"),
    (["generate", "{masked}", "--top-k", "0"], r"--top-k: must be a positive integer"),
    (["generate", "{masked}", "--top-p", "0"], r"--top-p: must be > 0"),
    (["generate", "{masked}", "--temperature", "nan"], r"--temperature: must be finite"),
    (["generate", "{masked}", "--decoder", "confidenc"], r"unknown decoder 'confidenc' \(did you mean 'confidence'"),
    (["generate", "{masked}", "--block", "4"], r"unrecognized arguments: --block 4 \(did you mean '--block-length'"),
    (["generate", "{masked}", "--length", "8", "--threshold", "0.5"], r"--threshold is for --decoder threshold"),
    (["generate", "{ar}", "--length", "8", "--steps", "4"], r"--steps is for diffusion models"),
    (["generate", "{ar}", "--length", "8", "--show-steps", "2"], r"--show-steps shows diffusion decoding"),
    (["infill", "{masked}", "--text", "abc [4]", "--gap-length", "0"], r"--gap-length: must be a positive integer"),
    (["generate", "{masked}", "--length", "8", "--decoder", "ar"], "decoder 'ar' is for autoregressive"),
    (["generate", "{ar}", "--length", "8", "--decoder", "confidence"], "one token per step"),
    (["infill", "{masked}", "--text", "no gaps here"], "has no gaps"),
    (["infill", "{ar}", "--text", "abc [3]"], "cannot fill gaps"),
    (["generate", "/nonexistent/model"], "is not a model directory"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, model_dirs, argv, message):
    argv = [a.format(**{k: str(v) for k, v in model_dirs.items()}) for a in argv]
    code, _out, err = run(capsys, "text", *argv)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("ebru: error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), err


def test_train_empty_corpus_is_one_line(capsys, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'task = "text"\ndata = "{tmp_path / "corpus"}"\n[text]\ncontext = 16\n')
    code, _, err = run(capsys, "text", "train", str(cfg), "--out", str(tmp_path / "run"))
    assert code == 2 and "the corpus is empty" in err and len(err.strip().splitlines()) == 1
    image = tmp_path / "i.toml"
    image.write_text("steps = 2\n")
    code, _, err = run(capsys, "text", "train", str(image), "--out", str(tmp_path / "run2"))
    assert code == 2 and "train it with 'ebru train'" in err


def test_eval_json(capsys, model_dirs, tmp_path, monkeypatch):
    from ebru.text import corpus as corpus_mod

    from .helpers import CORPUS

    monkeypatch.setattr(corpus_mod, "austen", lambda: CORPUS)
    out_json = tmp_path / "eval.json"
    code, out, _ = run(capsys, "text", "eval", str(model_dirs["masked"]), "--judge", str(model_dirs["ar"]),
                       "--windows", "2", "--samples", "1", "--json", str(out_json))
    assert code == 0 and "bits/char:    <=" in out
    r = json.loads(out_json.read_text())
    assert r["bpc_is_bound"] and r["samples"]["gen_ppl"] > 1
    # the figure is bits_per_char on the corpus's held-out text with these settings (seeded: reproducible)
    from ebru.text.metrics import bits_per_char

    want = bits_per_char(TextModel.from_pretrained(model_dirs["masked"], quiet=True), CORPUS.held_out_text,
                         windows=2, samples=1)
    assert r["bpc"] == want["bpc"] > 0 and r["eval"]["windows"] == 2 and r["held_out"] == CORPUS.held_out_name
    assert f"bits/char:    <= {want['bpc']:.4f}" in out
    assert set(r["tokens_per_s"]) >= {"batch_1", "batch_16"}


@pytest.mark.slow
@pytest.mark.skipif(__import__("ebru.text.corpus", fromlist=["_austen_dir"])._austen_dir() is None,
                    reason="the Austen corpus is not installed (make data)")
def test_quickstart_runs_end_to_end_on_a_tiny_budget(capsys, tmp_path):
    code, out, _ = run(capsys, "text", "quickstart", "--out", str(tmp_path), "--set", "steps=2",
                       "--set", "model.dim=32", "--set", "model.depth=1", "--set", "model.heads=2",
                       "--set", "text.context=128", "--set", "batch_size=2")
    assert code == 0
    assert "== a generated passage (128 characters in" in out and "decoded step by step" in out
    assert "It is a truth [" in out and "] that a single man in possession of a good fortune" in out
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["files"]) == ["MODEL_CARD.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert manifest["provenance"]["created_by"] == "ebru text train" and manifest["provenance"]["config"]["steps"] == 2
