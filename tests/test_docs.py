"""The documentation runs: every code example in README.md and docs/*.md, as a reader would paste it.

- Every ```python block runs in a fresh namespace, in its own empty working directory that holds two
  tiny trained models where the README's commands put the real ones: a text-to-image model at
  ``ebru-out/model`` (``make quickstart``) and a class-conditional one at ``ebru-class/model``
  (``ebru train quickstart --out ebru-class``), so the README's examples run as written. A block is
  skipped only when the line just before it is exactly ``<!-- docs-test: skip (why) -->``; at most
  ``MAX_SKIPPED`` blocks may say so.
- Every ```bash block marked ``<!-- docs-test: run -->`` runs with ``bash -e`` in the same kind of
  directory (``ebru`` is ``python -m ebru``; ``HOME`` is a fresh folder, so ``~/.config`` is too).
- Every ``ebru ...`` command in a bash block parses with the real parser (unknown flags, missing
  arguments and unknown commands fail; values are not checked here, since they name files that
  exist only on the reader's machine). Every flag in an inline `ebru ...` usage line, and every flag
  in a table row that starts with one, exists on that command.
- Every ```toml block parses; a training config (``task = ...``) passes ``TrainConfig`` and its
  ``[model]`` table builds a network; an ``[encoder]`` table names a registered encoder and only
  fields its factory takes.
- Every relative link and image points to a file that exists, and every ``#anchor`` to a heading;
  every repository path named in backticks (``src/ebru/...``) exists; README's layout table lists
  every package at its import-linter layer; every ``make TARGET`` shown is a Makefile target.

The whole module takes about 45-65 s on 2 CPU cores, most of it in the evaluation example (the
reference features of Fashion-MNIST's 10,000 test images) and in loading the text encoder (once in
this process, and once per ``ebru`` command on the text-to-image model in a bash block).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_SKIPPED = 3

MARKER = re.compile(r"<!--\s*docs-test\b.*?-->")
SKIP = re.compile(r"<!-- docs-test: skip \((?P<why>[^)]+)\) -->")
RUN = "<!-- docs-test: run -->"
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str  # the docs-test comment on the line before the fence, or ""

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented fences, as in lists, included)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start = len(m.group("indent")), i
        body = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = prev if MARKER.fullmatch(prev) else ""
        blocks.append(Block(path, start + 1, m.group("lang").lower(), "\n".join(body) + "\n", marker))
        i += 1
    return blocks


BLOCKS = [b for p in DOCS for b in read_blocks(p)]


def of(lang: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang]


def ids(blocks: list[Block]) -> list[str]:
    return [b.name for b in blocks]


# ------------------------------------------------------------------------------------- markers
def test_markers_are_exact_and_few():
    """A docs-test comment is one of the two exact forms, sits before a block, and skips stay rare."""
    for path in DOCS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in MARKER.finditer(line):
                assert SKIP.fullmatch(m.group(0)) or m.group(0) == RUN, (
                    f"{path.name}:{n}: {m.group(0)!r} is not '<!-- docs-test: skip (why) -->' or '{RUN}'")
    skipped = [b.name for b in BLOCKS if SKIP.fullmatch(b.marker)]
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped blocks: {skipped}"
    for b in BLOCKS:
        if b.marker == RUN:
            assert b.lang == "bash", f"{b.name}: '{RUN}' is for bash blocks (python blocks always run)"


# -------------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A class-conditional 28x28 model with Fashion-MNIST's class names, trained for 2 steps (seconds)."""
    from ebru.data import ImageDataset
    from ebru.data.fashion_mnist import CLASS_NAMES
    from ebru.train import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 28, 28), generator=g, dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(40) % 10, class_names=CLASS_NAMES, content_hash="0" * 64,
                        source="docs test: random images")
    net = {"kind": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
           "attention_resolutions": [], "num_heads": 1, "dropout": 0.0}
    cfg = TrainConfig.from_dict(dict(model=net, steps=2, batch_size=8, warmup_steps=1, log_every=1,
                                     checkpoint_every=2, sample_steps=1, device="cpu", tensorboard=False))
    return Trainer(cfg, tmp_path_factory.mktemp("tiny-run"), dataset=data, progress=False).fit()


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> Path:
    """A text-to-image 32x32 model with the real MiniLM encoder, trained for 2 steps (seconds).

    Its config names the quickstart's data, ``fashion-scenes:quickstart`` (as a real quickstart model's
    does, so prompt agreement knows its scenes), but it trains on 16 random images passed in memory.
    """
    from ebru.data import CaptionedImages
    from ebru.train import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    colours, items = ("red", "blue", "yellow", "white"), ("sneaker", "dress", "bag", "trousers")
    captions = [(f"a {colours[i % 4]} {items[i // 4]}",) for i in range(16)]
    data = CaptionedImages(images, captions, content_hash="0" * 64, source="docs test: random captioned images")
    net = {"kind": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
           "attention_resolutions": [], "num_heads": 1, "dropout": 0.0}
    cfg = TrainConfig.from_dict(dict(task="text2image", data="fashion-scenes:quickstart", model=net, steps=2,
                                     batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2, sample_steps=1,
                                     sample_prompts=["a red sneaker"], device="cpu", tensorboard=False))
    out = tmp_path_factory.mktemp("tiny-text-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBRU_CACHE", str(out / "cache"))  # caption encodings: not into the reader's own cache
        return Trainer(cfg, out / "run", dataset=data, progress=False).fit()


@pytest.fixture
def workdir(tmp_path, tiny_model, tiny_text_model, monkeypatch) -> Path:
    """An empty directory with fresh copies of the tiny models (``ebru-out/model``, ``ebru-class/model``), as cwd."""
    shutil.copytree(tiny_text_model, tmp_path / "ebru-out" / "model")
    shutil.copytree(tiny_model, tmp_path / "ebru-class" / "model")
    monkeypatch.chdir(tmp_path)
    for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY"):  # the reader's own trust settings do not apply
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def fashion_mnist_installed() -> bool:
    try:
        from ebru.data import FashionMNIST

        FashionMNIST("test")
    except (OSError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------- python blocks
@pytest.mark.parametrize("block", of("python"), ids=ids(of("python")))
def test_python_block_runs(block: Block, workdir: Path):
    skip = SKIP.fullmatch(block.marker)
    if skip:
        pytest.skip(skip.group("why"))
    needs_data = ("fashion-mnist", "evaluate_", "FashionScenes", "fashion-scenes")
    if any(word in block.code for word in needs_data) and not fashion_mnist_installed():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    code = compile(block.code, block.name, "exec")
    exec(code, {"__name__": "__docs__"})  # a fresh namespace: the block must import what it uses


# ------------------------------------------------------------------------------- bash blocks
@pytest.mark.parametrize("block", [b for b in of("bash") if b.marker == RUN],
                         ids=ids([b for b in of("bash") if b.marker == RUN]))
def test_bash_block_runs(block: Block, workdir: Path):
    shim = workdir / ".bin"
    shim.mkdir()
    (shim / "ebru").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ebru "$@"\n', encoding="utf-8")
    (shim / "ebru").chmod(0o755)
    home = workdir / ".home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CONFIG_HOME", "EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE")}
    env.update(HOME=str(home), PATH=f"{shim}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               EBRU_AUDIT_LOG=str(workdir / ".audit.jsonl"), EBRU_CACHE=str(workdir / ".cache"))
    script = workdir / ".block.sh"
    script.write_text(block.code, encoding="utf-8")
    r = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], cwd=workdir, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"{block.name} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    for cmd in shell_commands(block.code):  # what each `ebru sample` says it writes is there
        argv = ebru_argv(cmd) or []
        if argv[:1] == ["sample"]:
            opts = dict(itertools.pairwise(argv))
            if "--grid" in opts:
                assert (workdir / opts["--grid"]).is_file(), f"{block.name}: {opts['--grid']} was not written"
            if "--out-dir" in opts:
                pngs = list((workdir / opts["--out-dir"]).glob("*.png"))
                expected = sample_count(argv)
                assert len(pngs) == expected, f"{block.name}: {len(pngs)} PNGs in {opts['--out-dir']}, not {expected}"
    if "ebru sign" in block.code:  # signed by a trusted key: the loads that follow print no warning
        assert "warning" not in r.stderr, f"{block.name}: a warning after signing:\n{r.stderr[-2000:]}"


def sample_count(argv: list[str]) -> int:
    """Images an ``ebru sample`` command line draws: ``-n`` (default 16), per ``--prompt`` when there are prompts."""
    opts = dict(itertools.pairwise(argv))
    return int(opts.get("-n", 16)) * max(1, argv.count("--prompt"))


def test_sample_count_reads_n_per_prompt():
    assert sample_count(["sample", "m", "--out-dir", "d"]) == 16
    assert sample_count(["sample", "m", "-n", "20", "--out-dir", "d"]) == 20
    assert sample_count(["sample", "m", "--prompt", "a", "--prompt", "b", "-n", "2", "--out-dir", "d"]) == 4


# ------------------------------------------------------------------------------ ebru commands
def build_parser() -> argparse.ArgumentParser:
    """The ``ebru`` parser, wherever the CLI package keeps it."""
    try:
        from ebru.cli.app import build_parser as build
    except ImportError:
        from ebru.cli import build_parser as build
    return build()


def structural_parser() -> argparse.ArgumentParser:
    """The ``ebru`` parser with every value check removed: names, counts and required arguments only."""
    root = build_parser()
    stack = [root]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            else:
                action.type = None
                action.choices = None
    return root


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def ebru_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after ``ebru`` / ``python -m ebru`` / ``torchrun ... -m ebru``, or None."""
    if tokens and tokens[0] == "ebru":
        return tokens[1:]
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] == "ebru":
            return tokens[i + 2:]
    return None


def shell_commands(code: str) -> list[list[str]]:
    """Simple commands of a bash block: continuation lines joined, comments dropped, split at ; && || |."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # not shell (a pasted run(...) call in a plain block): nothing to parse
            continue
        cmd: list[str] = []
        for t in [*tokens, ";"]:
            if t and set(t) <= set(";&|"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(t)
    return out


COMMANDS = [(b, argv) for b in of("bash") for cmd in shell_commands(b.code) if (argv := ebru_argv(cmd)) is not None]


@pytest.mark.parametrize("block, argv", COMMANDS, ids=[f"{b.name}:ebru {' '.join(a)[:60]}" for b, a in COMMANDS])
def test_bash_commands_parse(block: Block, argv: list[str]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            structural_parser().parse_args(argv)
        except SystemExit as e:
            assert e.code in (0, None), f"{block.name}: 'ebru {shlex.join(argv)}' does not parse: {err.getvalue()}"


INLINE = re.compile(r"`(?:python -m )?ebru ([^`]+)`")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*")


def usage_problems(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """What an inline usage line such as ``ebru sample MODEL_DIR [--grid FILE]`` names that the parser lacks."""
    words = text.replace("(", " ").replace(")", " ").replace("[", " ").replace("]", " ").replace("\\|", " ").split()
    node, path = parser, ["ebru"]
    flags = {o for a in parser._actions for o in a.option_strings}  # global flags (--traceback) may come first
    rest = list(words)
    while rest and rest[0] in subparsers(node):
        node = subparsers(node)[rest[0]]
        path.append(rest.pop(0))
    if node is parser and rest and not rest[0].startswith("-"):
        return [f"'{' '.join(path)} {rest[0]}': no such command"]
    flags |= {o for a in node._actions for o in a.option_strings}
    problems = []
    for w in rest:
        m = FLAG.match(w)
        if m and m.group(0) not in flags:
            problems.append(f"'{' '.join(path)}' has no flag {m.group(0)}")
    return problems


def table_row_problems(line: str, parser: argparse.ArgumentParser) -> list[str]:
    """In a table row that starts with an ``ebru ...`` usage, every flag the row names belongs to that command."""
    m = re.match(r"^\|\s*`(?:python -m )?ebru ([^`]+)`", line)
    if not m:
        return []
    command = m.group(1).split(" [")[0].split(" --")[0]  # the words before the first option
    spans = re.findall(r"`([^`]+)`", line)[1:]
    flags = " ".join(w for span in spans for w in span.split() if FLAG.match(w))
    return usage_problems(f"{command} {flags}", parser) if flags else []


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_inline_usage_lines_name_real_flags(path: Path):
    parser = build_parser()
    text = path.read_text(encoding="utf-8")
    problems = [f"`ebru {m.group(1)}`: {p}" for m in INLINE.finditer(text) for p in usage_problems(m.group(1), parser)]
    problems += [p for line in text.splitlines() for p in table_row_problems(line, parser)]
    assert not problems, "\n".join(problems)


def test_usage_check_catches_a_wrong_flag():
    """The checks above are not vacuous: a renamed flag and an unknown command are caught."""
    parser = build_parser()
    assert usage_problems("text generate MODEL_DIR --block 8", parser) == ["'ebru text generate' has no flag --block"]
    assert usage_problems("sample MODEL_DIR -n 4 --grid g.png", parser) == []
    assert usage_problems("deploy MODEL_DIR", parser) == ["'ebru deploy': no such command"]
    row = "| `ebru text generate MODEL_DIR [--steps S]` | decoders: `ancestral`; `--block` for blocks; `--top-k` |"
    assert table_row_problems(row, parser) == ["'ebru text generate' has no flag --block"]
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        structural_parser().parse_args(["text", "generate", "m", "--block", "8"])


# ------------------------------------------------------------------------------------- toml
def encoder_table_problems(table: dict) -> list[str]:
    """What an ``[encoder]`` table names that ``ebru.encoders`` lacks: an unknown kind, or a field its factory refuses.

    Checked without building the encoder (a README's ``path`` and ``digest`` are the reader's own).
    """
    from ebru.encoders import ENCODERS

    spec = dict(table)
    kind = spec.pop("kind", "minilm")
    if kind not in ENCODERS:
        return [f"[encoder] kind {kind!r} is not one of {sorted(ENCODERS)}"]
    allowed = set(getattr(ENCODERS[kind], "spec_fields", ())) | {"name", "dim", "pooled_dim"}
    return [f"[encoder] kind {kind!r} takes no field {key!r}" for key in spec if key not in allowed]


def test_encoder_check_catches_a_wrong_field():
    assert encoder_table_problems({"kind": "minilm", "max_length": 32}) == []
    assert encoder_table_problems({"kind": "hf", "path": "/m", "digest": "sha256:0", "pooling": "mean"}) == []
    assert encoder_table_problems({"kind": "hf", "folder": "/m"}) == ["[encoder] kind 'hf' takes no field 'folder'"]
    assert encoder_table_problems({"kind": "clip"})[0].startswith("[encoder] kind 'clip' is not one of")


@pytest.mark.parametrize("block", of("toml"), ids=ids(of("toml")))
def test_toml_block_is_valid(block: Block):
    data = tomllib.loads(block.code)
    if isinstance(data.get("encoder"), dict):
        assert not encoder_table_problems(data["encoder"]), f"{block.name}: {encoder_table_problems(data['encoder'])}"
    if "task" not in data:
        return  # e.g. a licence policy or a lone [encoder] table: valid TOML is what can be checked here
    from ebru.nets import build_net
    from ebru.train import TrainConfig

    cfg = TrainConfig.from_dict(data)
    if cfg.task in ("image", "text2image"):
        size = cfg.image_size or 28
        cond = {"num_classes": 2} if cfg.task == "image" else {"num_classes": None, "cond_dim": 384, "pooled_dim": 384}
        build_net({"kind": "unet", **cfg.model, "image_size": size, "in_channels": 3, "out_channels": 3, **cond})


# ------------------------------------------------------------------------------------ links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_links_resolve(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not followed offline
        file, _, frag = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, "\n".join(broken)


def test_slug_matches_github():
    assert slug("Run times of `ebru demo` and `ebru eval`") == "run-times-of-ebru-demo-and-ebru-eval"
    assert slug("Quality after 20 minutes of training, against diffusers' tutorial recipe") == (
        "quality-after-20-minutes-of-training-against-diffusers-tutorial-recipe")


PATH_SPAN = re.compile(r"`((?:src|tests|benchmarks|docs)/[\w./{},-]+)`")


def expand(path: str) -> list[str]:
    """``a/{b,c}.png`` -> ``a/b.png``, ``a/c.png`` (one brace group, as the docs write it)."""
    m = re.search(r"\{([^}]*)\}", path)
    return [path[:m.start()] + alt + path[m.end():] for alt in m.group(1).split(",")] if m else [path]


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_named_files_exist(path: Path):
    """Every repository path the docs name (``src/ebru/...``, ``benchmarks/...``) exists."""
    named = {p for m in PATH_SPAN.finditer(path.read_text(encoding="utf-8")) for p in expand(m.group(1).rstrip("/."))}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{path.name} names files that do not exist: {missing}"


def test_layout_table_matches_the_packages_and_their_layers():
    """README's layout table lists every package of src/ebru once, at its import-linter layer."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in pyproject["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    layer = {name.strip(" ()"): i for i, row in enumerate(reversed(contract["layers"])) for name in row.split("|")}
    src = ROOT / "src" / "ebru"
    packages = {d.name for d in src.iterdir() if (d / "__init__.py").is_file()}
    packages |= {f.stem for f in src.glob("*.py") if f.stem not in ("__init__", "__main__")}
    rows = re.findall(r"^\| (\d+) \| `ebru\.(\w+)` \|", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.M)
    shown = {name: int(k) for k, name in rows}
    assert len(rows) == len(shown), "a package is listed twice"
    assert set(shown) == packages, f"missing: {sorted(packages - set(shown))}, extra: {sorted(set(shown) - packages)}"
    assert shown == {name: layer[name] for name in packages}


# ------------------------------------------------------------------------------------- make
def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    shown = {cmd[1] for b in of("bash") for cmd in shell_commands(b.code) if cmd[:1] == ["make"] and len(cmd) > 1}
    shown |= {m.group(1) for p in DOCS for m in re.finditer(r"`make ([\w-]+)", p.read_text(encoding="utf-8"))}
    assert shown and not shown - targets, f"make targets shown but not in the Makefile: {sorted(shown - targets)}"
