"""``ebru serve``: the HTTP API and web page over verified models (:mod:`ebru.serve`).

``ebru serve MODEL_DIR... [--host 127.0.0.1] [--port 8000] [--tokens FILE] [--out DIR]`` loads every model
once (``ebru.load``: manifest, signature, licence), binds, and serves until Ctrl-C.
``ebru serve --add-token NAME [--tokens FILE]`` adds a token to the token file and prints it, once.

Start-up faults are one line each and exit 2: no model, a model that fails verification, a port in use,
an unreadable or damaged token file.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

from . import argtypes
from .options import add_device, add_trust_flags, load_options

LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")
TOKENS_ENV = "EBRU_SERVE_TOKENS"


def default_tokens_file() -> Path:
    """``$EBRU_SERVE_TOKENS``, else ``$XDG_CONFIG_HOME/ebru/serve_tokens.json``."""
    value = os.environ.get(TOKENS_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    from ebru.trust.settings import config_dir

    return config_dir() / "serve_tokens.json"


def _limits(pairs: list[str]):
    from dataclasses import fields

    from ebru.checks import unknown_key_message
    from ebru.serve import ServeLimits

    names = {f.name: f.type for f in fields(ServeLimits)}
    given = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--limit takes KEY=VALUE, got {pair!r}")
        if key not in names:
            raise ValueError(unknown_key_message(key, names, "--limit"))
        try:
            given[key] = int(value) if names[key] == "int" else float(value)
        except ValueError:
            raise ValueError(f"--limit {key} must be {'an integer' if names[key] == 'int' else 'a number'}, "
                             f"got {value!r}") from None
    return ServeLimits(**given)


def bind_warning(host: str, tokens_file: object) -> str | None:
    """The warning for a server reachable beyond this machine with no tokens, else None."""
    if tokens_file is not None or host in LOCAL_HOSTS:
        return None
    return (f"listening on {host} without tokens: anyone who can reach this port can generate; add tokens with "
            "'ebru serve --add-token NAME' and restart")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ValueError (one line) when the port is taken or the host unknown."""
    if port > 65535:
        raise ValueError(f"--port must be at most 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"cannot listen on {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        why = "the port is in use (another server is listening there)" if e.errno == errno.EADDRINUSE else e.strerror
        raise ValueError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose Ctrl-C (or SIGTERM) first stops the model workers: the running job ends at its
        next step and waiting ones at once, each with a ``cancelled`` event giving the reason, so the clients
        streaming their events see it and close, and the server exits without waiting out its graceful timeout
        on open event streams. Files are written whole or not at all (``write_signed_png``)."""

        def __init__(self, config: uvicorn.Config, workers) -> None:
            super().__init__(config)
            self.workers = list(workers)

        def handle_exit(self, sig, frame) -> None:
            for w in self.workers:
                w.shutdown()
            super().handle_exit(sig, frame)

    return Server


def _stopping_server(config, workers):
    """A :func:`_server_class` server over ``workers`` (uvicorn is imported late: ``--help`` needs none of it)."""
    return _server_class()(config, workers)


def _cmd_serve(args: argparse.Namespace) -> int:
    tokens = Path(args.tokens) if args.tokens else default_tokens_file()
    if args.add_token is not None:
        if args.model_dir:
            raise ValueError("--add-token only adds a token; run ebru serve MODEL_DIR... separately to serve")
        from ebru.serve.auth import add_token

        token = add_token(tokens, args.add_token, expires_days=args.expires_days)
        print(token)
        print(f"ebru: note: token {args.add_token!r} added to {tokens}; it is shown only now: keep it secret "
              "(send it as 'Authorization: Bearer <token>')", file=sys.stderr)
        return 0
    if not args.model_dir:
        raise ValueError("give at least one model directory: ebru serve MODEL_DIR... (see 'ebru serve --help')")
    if args.expires_days is not None:
        raise ValueError("--expires-days goes with --add-token NAME")
    limits = _limits(args.limit)
    tokens_file = tokens if (args.tokens or tokens.exists()) else None
    if tokens_file is not None:
        from ebru.serve.auth import read_token_file

        read_token_file(tokens_file)  # unreadable or damaged: one line now, before anything loads
    import torch

    sock = _bind(args.host, args.port)
    # torch runs only in the model workers' threads. With GNU OpenMP (torch's CPU backend), a second
    # multi-threaded team in the process (the main thread's, made while the models load) puts more
    # OpenMP threads than cores in play, and libgomp then stops spin-waiting between parallel regions:
    # measured on 2 cores, sampling in a worker thread ran 2.3x slower than in the main thread. So the main
    # thread loads with one thread and each worker gets the intra-op threads torch would have used; the
    # setting is put back when the server stops (main() may be called in-process, as the tests do).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import uvicorn

        from ebru.serve import create_app

        app = create_app(args.model_dir, tokens_file, limits, out_dir=args.out, load_options=load_options(args),
                         device=args.device, prompt_policy=args.prompt_policy, torch_threads=threads)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        names = ", ".join(app.state.server.models)
        print(f"ebru serve: {names} on http://{shown}:{port}/  (tokens: {tokens_file or 'none'}; images in "
              f"{args.out}/)", flush=True)
        if (warning := bind_warning(args.host, tokens_file)) is not None:
            print(f"ebru: warning: {warning}", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level in ("info", "debug"),
                                timeout_graceful_shutdown=5)
        _stopping_server(config, app.state.server.workers.values()).run(sockets=[sock])
    finally:
        sock.close()
        torch.set_num_threads(threads)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ebru serve`` to the ``ebru`` parser."""
    p = sub.add_parser(
        "serve", help="serve models over HTTP: an API, server-sent progress, and a web page",
        usage="ebru serve MODEL_DIR... [--host 127.0.0.1] [--port 8000] [--tokens FILE] [--out DIR] | "
              "ebru serve --add-token NAME [--tokens FILE]",
        description="Serve image, text-to-image and text models over HTTP (API at /v1/, web page at /). Models "
                    "are verified once at start-up; every image is watermarked, signed and recorded.")
    p.set_defaults(func=_cmd_serve, flush_denormal=True)
    p.add_argument("model_dir", nargs="*", metavar="MODEL_DIR", help="model package directories to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=argtypes.nonnegative_int, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument("--tokens", default=None, metavar="FILE",
                   help=f"token file (default: ${TOKENS_ENV}, else ~/.config/ebru/serve_tokens.json when it exists; "
                        "without one, no token is needed)")
    p.add_argument("--add-token", default=None, metavar="NAME",
                   help="add a token for NAME to the token file, print it once, and exit")
    p.add_argument("--expires-days", type=argtypes.nonnegative_float, default=None, metavar="DAYS",
                   help="with --add-token: the token is refused after DAYS days")
    p.add_argument("--out", default="ebru-serve-out", type=argtypes.output_dir, metavar="DIR",
                   help="where generated images are written, one folder per job (default ebru-serve-out)")
    p.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                   help="a request or queue limit, e.g. --limit max_queue=8 --limit max_steps=100 (see "
                        "ebru.serve.ServeLimits)")
    p.add_argument("--prompt-policy", choices=("hash", "full", "omit"), default="hash",
                   help="what manifests, records and the audit log keep of prompts (default: their SHA-256)")
    p.add_argument("--log-level", choices=("warning", "info", "debug"), default="info",
                   help="uvicorn's log level (info: one line per request)")
    add_device(p)
    add_trust_flags(p)
