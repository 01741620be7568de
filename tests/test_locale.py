"""Files ebru writes and reads do not depend on the machine's locale: UTF-8 everywhere.

Every save/load path runs in a subprocess under ``LC_ALL=C PYTHONUTF8=0``, where Python's
default text encoding is ASCII (``LC_ALL`` also stops PEP 538's locale coercion): a text model
whose vocabulary holds "é", an image model whose class is "Café", a TOML recipe with accents,
a tuned schedule, checkpoints and resume. A file that is not valid UTF-8 gets the one-line error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

TEXT = "Café au lait, déjà vu — a naïve façade. " * 40

SCRIPT = textwrap.dedent('''
    import json, locale, sys, warnings
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from ebru.train import Trainer, load_config
    from ebru.text import TextModel
    from ebru.pipelines.image import ImagePipeline
    from ebru.diffusion import WarpedSchedule

    root = Path(sys.argv[1])
    out = {"encoding": locale.getpreferredencoding(False)}
    warnings.simplefilter("ignore")  # unsigned-package warnings

    # a text model: recipe with accents, corpus with accents, checkpoints, resume, package, load
    cfg = load_config(root / "text.toml", [f"data={root / 'corpus'}"])
    Trainer(cfg, root / "text-run", progress=False).fit()
    cfg = load_config(root / "text.toml", [f"data={root / 'corpus'}", "steps=3"])
    Trainer(cfg, root / "text-run", resume=True, progress=False).fit()
    model = TextModel.from_pretrained(root / "text-run" / "model")
    out["vocab"] = model.tokenizer.vocab_size
    out["has_e_acute"] = "é" in model.tokenizer.decode(model.tokenizer.encode("é"))
    out["generated"] = len(model.generate(1, 8, steps=2, seeds=0).texts[0]) > 0

    # an image model whose class name has an accent
    cfg = load_config(root / "image.toml", [f"data={root / 'images'}"])
    Trainer(cfg, root / "image-run", progress=False).fit()
    pipe = ImagePipeline.from_pretrained(root / "image-run" / "model", watermark=False)
    out["classes"] = pipe.class_names

    # a tuned schedule saved and read back
    w = WarpedSchedule([0.0, 0.3, 0.7, 1.0], name="tuned-é", info={"note": "réglé"})
    w.save(root / "schedule.json")
    out["schedule"] = WarpedSchedule.load(root / "schedule.json").name
    print(json.dumps(out, ensure_ascii=True))
''')


def run_c_locale(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8", "PYTHONIOENC"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, timeout=600)


def test_save_and_load_paths_under_the_c_locale(tmp_path):
    from PIL import Image

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "novel.txt").write_text(TEXT, encoding="utf-8")
    for cls in ("Café", "Thé"):
        folder = tmp_path / "images" / cls
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")
    (tmp_path / "text.toml").write_text(textwrap.dedent('''
        # « Recette » : un modèle minuscule
        task = "text"
        steps = 2
        batch_size = 2
        checkpoint_every = 1
        tensorboard = false
        device = "cpu"
        [model]
        dim = 16
        depth = 1
        heads = 2
        [text]
        process = "masked"
        context = 16
        sample_length = 8
        sample_steps = 2
    '''), encoding="utf-8")
    (tmp_path / "image.toml").write_text(textwrap.dedent('''
        # Café images
        task = "image"
        steps = 1
        batch_size = 2
        sample_steps = 1
        tensorboard = false
        device = "cpu"
        [model]
        channels = 8
        channel_mult = [1]
        num_res_blocks = 1
        attention_resolutions = []
    '''), encoding="utf-8")
    (tmp_path / "script.py").write_text(SCRIPT, encoding="utf-8")
    r = run_c_locale(["script.py", str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")[-3000:]
    out = json.loads(r.stdout.decode("ascii").strip().splitlines()[-1])
    assert out["encoding"].lower() in ("ansi_x3.4-1968", "ascii", "us-ascii")  # the locale really is C
    assert out["has_e_acute"] and out["generated"]
    assert out["vocab"] == len(set(TEXT))  # every character, "é" and "—" included (the [MASK] id comes on top)
    assert out["classes"] == ["Café", "Thé"]
    assert out["schedule"] == "tuned-é"


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "bad.toml").write_bytes(b'# caf\xe9 in latin-1\nsteps = 2\n')
    r = run_c_locale(["-m", "ebru", "train", "bad.toml", "--out", "run"], tmp_path)
    err = r.stderr.decode("utf-8", "replace").strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "bad.toml" in err and "UTF-8" in err
    assert not (tmp_path / "run").exists()
