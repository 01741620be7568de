"""The ``ebru text ...`` commands: discrete diffusion language models and their AR baseline.

    ebru text quickstart [--out DIR] [--set KEY=VALUE]
    ebru text train CONFIG --out DIR [--set KEY=VALUE] [--resume]
    ebru text generate MODEL_DIR [--prompt P] [--length L] [--steps S] [--decoder D] [--block-length B]
    ebru text infill MODEL_DIR --text "It is a truth [25] that a single man"
    ebru text eval MODEL_DIR [--judge AR_MODEL_DIR] [--json FILE]

Lengths, steps and gaps count tokens (characters for a character-level model). Bad input
raises ValueError/OSError subclasses with one-line messages, which ``ebru`` prints as
``ebru: error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import argtypes
from .options import add_device, add_json, add_seed, add_train_flags, add_trust_flags, load_options, write_json

TEXT_RECIPES = "text_quickstart, text_mdlm_austen, text_ar_austen, text_block_austen, text_uniform_austen"


def _mask_char() -> str:
    enc = (getattr(sys.stdout, "encoding", None) or "").lower()
    return "\u00b7" if "utf" in enc else "#"


def _show(tokens: list[int], tokenizer: Any, mask_id: int, mask: str) -> str:
    """Decode tokens, with each [MASK] shown as ``mask`` (one per token)."""
    out, run = [], []
    for t in tokens:
        if t == mask_id:
            if run:
                out.append(tokenizer.decode(run))
                run = []
            out.append(mask)
        else:
            run.append(t)
    if run:
        out.append(tokenizer.decode(run))
    return "".join(out)


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n")


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm  # imported when a command runs, not at start-up (as torch and ebru.text are)

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr)


def _decode_opts(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}


def _pick(n: int, k: int) -> list[int]:
    """``k`` frame indices spread over ``n`` frames, last included."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


# ------------------------------------------------------------------------------------------ commands
def _cmd_train(args: argparse.Namespace) -> int:
    from ebru.train import Trainer, load_config

    cfg = load_config(args.config, args.set)
    if cfg.task != "text":
        raise ValueError(f"{args.config} is an image config (task = {cfg.task!r}): train it with 'ebru train'")
    model_dir = Trainer(cfg, args.out, resume=args.resume).fit()
    if model_dir is not None:
        print(f"model:   {model_dir}\nlog:     {args.out}/log.csv\nsamples: {args.out}/samples/")
    return 0


def _decoder(text: str) -> str:
    """A ``--decoder`` name that some text process accepts (which one this model's takes is checked on load)."""
    from ebru.text import PROCESSES

    return argtypes.one_of("decoder", sorted({d for p in PROCESSES.values() for d in p.decoders}))(text)


def _check_generate_args(args: argparse.Namespace, model: Any) -> None:
    """Refuse flags this model would ignore, before any decoding."""
    process = model.process
    decoder = process.check_decoder(args.decoder)
    if args.threshold is not None and decoder != "threshold":
        raise ValueError(f"--threshold is for --decoder threshold, and this command decodes with {decoder!r}")
    if not process.uses_steps:
        what = f"{process.article} {process.title} model writes one token per step"
        if args.steps is not None:
            raise ValueError(f"--steps is for diffusion models; {what}")
        if args.show_steps:
            raise ValueError(f"--show-steps shows diffusion decoding; {what}")


def _cmd_generate(args: argparse.Namespace) -> int:
    from ebru.text import TextModel

    model = TextModel.from_pretrained(args.model_dir, device=args.device, **load_options(args))
    _check_generate_args(args, model)
    steps = args.steps if args.steps is not None else (args.length if model.process.uses_steps else None)
    frames: list[list[int]] = []
    bar = None  # made at the first step, so that an input error is not printed over a bar

    def on_step(info: dict[str, Any]) -> None:
        nonlocal bar
        if bar is None:
            bar = _bar(steps or args.length, "generate")
        bar.update(1)
        if args.show_steps:
            frames.append(info["tokens"][0].tolist())

    threshold = {} if args.threshold is None else {"threshold": args.threshold}
    try:
        gen = model.generate(args.n, args.length, args.prompt or "", steps=steps, decoder=args.decoder,
                             block_length=args.block_length, seeds=args.seed, callback=on_step, **threshold,
                             **_decode_opts(args))
    finally:
        if bar is not None:
            bar.close()
    if args.show_steps and frames:
        mask = _mask_char()
        mask_id = getattr(model.process, "mask_id", -1)
        for k in _pick(len(frames), args.show_steps):
            print(f"[step {k + 1:>4}] {_one_line(_show(frames[k], model.tokenizer, mask_id, mask))}")
        print()
    for i, text in enumerate(gen.texts):
        if args.n > 1:
            print(f"--- sample {i + 1} (seed {args.seed + i})")
        print(text)
    print(f"\n({args.n} x {args.length} tokens, {gen.nfe} network calls, {gen.seconds:.2f} s, "
          f"{args.n * args.length / gen.seconds:.0f} tokens/s)", file=sys.stderr)
    return 0


def _cmd_infill(args: argparse.Namespace) -> int:
    from ebru.text import TextModel

    model = TextModel.from_pretrained(args.model_dir, device=args.device, **load_options(args))
    result = model.infill(args.text, gap_length=args.gap_length, steps=args.steps, decoder=args.decoder,
                          seed=args.seed, **_decode_opts(args))
    print(result.text)
    if args.mark:
        print("".join(f"[{t}]" if gap else t for t, gap in result.parts))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from ebru.pipelines.text import evaluate_text_model

    r = evaluate_text_model(args.model_dir, judge=args.judge, windows=args.windows, samples=args.samples,
                            device=args.device, **load_options(args))
    le = "<=" if r["bpc_is_bound"] else "="
    print(f"model:        {r['model']} ({r['kind']})")
    print(f"held out:     {r['held_out']} ({r['eval']['windows']} windows, {r['eval']['chars']} characters)")
    print(f"bits/char:    {le} {r['bpc']:.4f}" + ("   (an ELBO bound)" if r["bpc_is_bound"] else "   (exact)"))
    s = r["samples"]
    print(f"samples:      {s['n']} x {s['length']} tokens in {s['steps']} steps: unigram entropy "
          f"{s['entropy_bits']:.3f} bits" + (f", generative perplexity {s['gen_ppl']:.3f}" if "gen_ppl" in s else ""))
    tp = r["tokens_per_s"]
    print(f"tokens/s:     {tp['batch_1']:.0f} at batch 1, {tp['batch_16']:.0f} at batch 16")
    if args.json:
        write_json(args.json, r)
        print(f"json:         {args.json}")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    print(f"ebru text quickstart: training a masked-diffusion model on Jane Austen into {args.out}/ ...", flush=True)
    from ebru.pipelines.text import run_text_quickstart

    r = run_text_quickstart(args.out, args.set)
    mask = _mask_char()
    print(f"\ntrained {r['steps']} steps in {r['minutes']:.1f} min, final loss {r['final_loss']:.4f} nats/char "
          f"(a bound); held-out {r['held_out']}: <= {r['bpc']['bpc']:.3f} bits/char")
    print(f"\n== a generated passage ({r['length']} characters in {len(r['frames'])} ancestral steps, "
          f"{r['nfe']} network calls, nucleus p = 0.9)\n")
    print(r["text"])
    print(f"\n== the same passage, decoded step by step ({mask} = [MASK])\n")
    for k in _pick(len(r["frames"]), 8):
        print(f"step {k + 1:>2}: {_one_line(_show(r['frames'][k], r['tokenizer'], r['mask_id'], mask))}")
    print("\n== an infilled sentence (the 25 characters in [brackets] are the model's)\n")
    print("".join(f"[{t}]" if gap else t for t, gap in r["infill"].parts))
    print(f"\nmodel: {r['model']}\nlog:   {r['log']}\n({r['seconds'] / 60:.1f} min in all)")
    return 0


# ------------------------------------------------------------------------------------------- parser
def _sampling_args(p: argparse.ArgumentParser, what: str | None = "sample") -> None:
    p.add_argument("--temperature", type=argtypes.nonnegative_float, default=1.0, help="0 = greedy (default 1)")
    p.add_argument("--top-k", type=argtypes.positive_int, default=None, metavar="K",
                   help="keep the K most likely tokens")
    p.add_argument("--top-p", type=argtypes.probability, default=None, metavar="P",
                   help="nucleus sampling: keep the most likely tokens of mass P, in (0, 1]")
    add_seed(p, what)
    add_device(p)
    add_trust_flags(p)


def _decoder_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--decoder", type=_decoder, default=None, help=help)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ebru text`` group to the ``ebru`` parser."""
    text = sub.add_parser("text", help="text diffusion models: quickstart, train, generate, infill, eval",
                          description="Text diffusion models and their autoregressive baseline. Lengths, steps "
                                      "and gaps count tokens (characters for a character-level model).")
    ts = text.add_subparsers(dest="text_command", metavar="COMMAND", parser_class=type(text))
    text.set_defaults(func=lambda args: (text.print_help(sys.stderr), 2)[1], flush_denormal=True)

    q = ts.add_parser("quickstart", help="train a masked-diffusion model on Jane Austen on this CPU (< 10 min)")
    add_train_flags(q, out_default="ebru-text-quickstart", resume=False, example="--set time_budget=2")
    q.set_defaults(func=_cmd_quickstart)

    t = ts.add_parser("train", help="train a text model from a config file or recipe")
    t.add_argument("config", help=f"a TOML config (task = \"text\"), or a recipe: {TEXT_RECIPES}")
    add_train_flags(t, example="--set text.context=128 --set model.dim=256")
    t.set_defaults(func=_cmd_train)

    g = ts.add_parser("generate", help="generate text from a model directory")
    g.add_argument("model_dir", metavar="MODEL_DIR")
    g.add_argument("--prompt", default="", help="text to continue (kept as is)")
    g.add_argument("--length", type=argtypes.positive_int, default=200, metavar="L",
                   help="tokens to generate (default 200)")
    g.add_argument("--steps", type=argtypes.positive_int, default=None, metavar="S",
                   help="denoising steps in all (diffusion models; default: --length)")
    _decoder_arg(g, "ancestral | confidence | threshold (masked, block); confidence | ancestral (uniform); "
                    "ar (autoregressive); default: the model's")
    g.add_argument("--block-length", type=argtypes.positive_int, default=None, metavar="B",
                   help="masked models: decode left to right in blocks of B tokens (semi-autoregressive)")
    g.add_argument("--threshold", type=argtypes.fraction, default=None, metavar="T",
                   help="confidence threshold of --decoder threshold, in [0, 1] (default 0.9)")
    g.add_argument("-n", type=argtypes.positive_int, default=1, metavar="N", help="number of samples (default 1)")
    g.add_argument("--show-steps", type=argtypes.nonnegative_int, default=0, metavar="K",
                   help="also print K snapshots of the decoding (diffusion models)")
    _sampling_args(g)
    g.set_defaults(func=_cmd_generate)

    i = ts.add_parser("infill", help="fill the gaps of a text: --text \"It is a truth [25] that a single man\"",
                      description="Fill the gaps of a text and keep the given text as it is. Gaps are counted "
                                  "in tokens, not characters (they are the same only for a character-level "
                                  "model): [N] is a gap of N tokens, [___] one token per underscore.")
    i.add_argument("model_dir", metavar="MODEL_DIR")
    i.add_argument("--text", required=True,
                   help="text with gaps, counted in tokens: [N] = N tokens, [___] = one token per underscore")
    i.add_argument("--gap-length", type=argtypes.positive_int, default=None, metavar="N",
                   help="give every gap N tokens")
    i.add_argument("--steps", type=argtypes.positive_int, default=None, metavar="S",
                   help="denoising steps (default: one per gap token)")
    _decoder_arg(i, "ancestral | confidence | threshold (default confidence)")
    i.add_argument("--mark", action="store_true", help="also print the result with the filled gaps in [brackets]")
    _sampling_args(i, None)
    i.set_defaults(func=_cmd_infill)

    e = ts.add_parser("eval", help="held-out bits/char, sample entropy, generative perplexity, tokens/s")
    e.add_argument("model_dir", metavar="MODEL_DIR")
    e.add_argument("--judge", default=None, metavar="AR_MODEL_DIR", help="AR model for generative perplexity")
    e.add_argument("--windows", type=argtypes.positive_int, default=64,
                   help="held-out windows of one context each (default 64)")
    e.add_argument("--samples", type=argtypes.positive_int, default=4,
                   help="ELBO draws per window (diffusion; default 4)")
    add_json(e, "the figures")
    add_device(e)
    add_trust_flags(e)
    e.set_defaults(func=_cmd_eval)
