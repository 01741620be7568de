"""Set-up for the ``ebru serve`` tests: tiny model packages and a real uvicorn server on 127.0.0.1.

- Network: connections to the loopback address are allowed (the server's own tests), any other refused.
- ``models``: three tiny unsigned packages made once per session: ``cond`` (8x8 grey, three classes, the
  U-Net of tests/cli with random weights), ``t2i`` (8x8 RGB, text-conditional, all-MiniLM-L6-v2 as its
  encoder) and ``chars`` (a masked-diffusion character model, as tests/text makes them).
- ``serve(app)``: runs an app under uvicorn in a thread on a free port; returns a :class:`Running` with its
  ``url`` and an httpx ``client``; stopped at the end of the module.
- Every server runs with its own watermark key, C2PA CA, provenance store and audit log (``state``).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from ebru.nets import build_net
from ebru.trust import write_package

CLASS_NAMES = ["T-shirt/top", "Sneaker", "Bag"]
TINY_UNET = {"kind": "unet", "image_size": 8, "in_channels": 1, "out_channels": 1, "channels": 8,
             "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [], "num_heads": 1}
T2I_UNET = {"kind": "unet", "image_size": 8, "in_channels": 3, "out_channels": 3, "channels": 16,
            "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "num_heads": 2,
            "num_classes": None, "cond_dim": 384, "pooled_dim": 384}
CARD = "---\nlicense: apache-2.0\nbase_model: null\nintended_use: tests\n---\n# tiny\n"
ALPHABET = "abcdefghij .,\n"
LOOPBACK = ("127.0.0.1", "::1", "localhost")

_connect, _connect_ex, _create_connection = socket.socket.connect, socket.socket.connect_ex, socket.create_connection


class NetworkDisabledError(RuntimeError):
    """Raised by a connection to anything but the loopback address."""


def _host(address) -> str | None:
    return address[0] if isinstance(address, tuple) else None


def _only_loopback(real):
    def connect(self, address, *args, **kwargs):
        if getattr(self, "family", None) == socket.AF_UNIX or _host(address) in LOOPBACK:
            return real(self, address, *args, **kwargs)
        raise NetworkDisabledError(f"network access is disabled in the ebru test suite (not loopback: {address})")
    return connect


def _create(address, *args, **kwargs):
    if _host(address) in LOOPBACK:
        return _create_connection(address, *args, **kwargs)
    raise NetworkDisabledError(f"network access is disabled in the ebru test suite (not loopback: {address})")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Overrides the suite's fixture: loopback allowed (the server under test), anything else refused."""
    monkeypatch.setattr(socket.socket, "connect", _only_loopback(_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _only_loopback(_connect_ex))
    monkeypatch.setattr(socket, "create_connection", _create)


def random_weights(net_cfg: dict, scale: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: scale * torch.randn(v.shape, generator=g) for k, v in build_net(net_cfg).state_dict().items()}


def make_class_model(path: Path) -> Path:
    net = {**TINY_UNET, "num_classes": len(CLASS_NAMES)}
    config = {"kind": "image-diffusion", "net": net, "precond": {"prediction": "edm", "sigma_data": 0.5},
              "image_shape": [1, 8, 8], "num_classes": len(CLASS_NAMES), "class_names": CLASS_NAMES,
              "sampling": {"sigma_min": 0.002, "sigma_max": 80.0, "sampler": "euler", "steps": 4, "guidance": 1.5,
                           "schedule": "karras"}}
    return write_package(path, config, random_weights(net), CARD, {"created_by": "tests"})


def make_t2i_model(path: Path) -> Path:
    from ebru.encoders import default_encoder

    config = {"kind": "image-diffusion", "net": T2I_UNET, "precond": {"prediction": "edm", "sigma_data": 0.5},
              "image_shape": [3, 8, 8], "num_classes": None, "class_names": None, "conditioning": "text",
              "text_encoder": default_encoder().spec(),
              "sampling": {"sigma_min": 0.002, "sigma_max": 80.0, "sampler": "euler", "steps": 4, "guidance": 3.0,
                           "schedule": "karras"}}
    return write_package(path, config, random_weights(T2I_UNET, 0.05), CARD, {"created_by": "tests"})


def make_text_model(path: Path) -> Path:
    from ebru.nets import Transformer
    from ebru.text import CharTokenizer
    from ebru.text.model import model_dir_config, net_config, save_model_dir

    torch.manual_seed(0)
    tok = CharTokenizer(ALPHABET)
    net = Transformer(net_config("masked", tok.vocab_size, 32, {"dim": 32, "depth": 2, "heads": 2})).eval()
    training = {"steps": 0, "sequences": 0, "minutes": 0, "final_loss": 1.0, "dataset": "tests", "corpus": "austen",
                "config": {"data": "austen"}}
    cfg = model_dir_config("masked", net, tok, block_size=8, eps=1e-3,
                           sampling={"length": 16, "steps": 4, "decoder": None}, training=training)
    return save_model_dir(path, net.state_dict(), cfg, tok)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-models")
    return {"cond": make_class_model(root / "cond"), "t2i": make_t2i_model(root / "t2i"),
            "chars": make_text_model(root / "chars")}


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """The module's own watermark key, C2PA CA, provenance store, audit log and trust settings."""
    root = tmp_path_factory.mktemp("serve-state")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("EBRU_TRUSTED_KEYS", "EBRU_LICENSE_POLICY", "EBRU_KEY_PASSPHRASE", "EBRU_DEBUG",
                    "EBRU_WATERMARK_KEY", "EBRU_C2PA_DIR", "EBRU_PROVENANCE_STORE", "EBRU_SERVE_TOKENS"):
            mp.delenv(var, raising=False)
        mp.setenv("XDG_CONFIG_HOME", str(root / "config"))
        mp.setenv("XDG_STATE_HOME", str(root / "state"))
        mp.setenv("XDG_DATA_HOME", str(root / "data"))
        mp.setenv("EBRU_AUDIT_LOG", str(root / "audit.jsonl"))
        yield root


@dataclass
class Running:
    url: str
    client: httpx.Client
    app: object
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


def start(app) -> Running:
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port, in a thread; returns once it accepts requests."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    return Running(url, httpx.Client(base_url=url, timeout=30), app, server, thread)


@pytest.fixture(scope="module")
def serve():
    """``serve(app)`` -> :class:`Running`; every server started is stopped when the module ends."""
    started: list[Running] = []

    def run(app) -> Running:
        r = start(app)
        started.append(r)
        return r

    yield run
    for r in started:
        r.stop()


def read_events(client: httpx.Client, job_id: str, *, until=("done", "error", "cancelled"), headers=None):
    """The (event, data) pairs of a job's stream, up to and including the first of ``until``."""
    import json

    out, name = [], None
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
                if name in until:
                    return out
    return out
