"""``ebru serve``: an HTTP API and a web page over verified image, text-to-image and text models.

- :func:`create_app` (``app``): the FastAPI app; models load once through ``ebru.load`` at start-up.
- :class:`ServeLimits` (``limits``): request bounds, queue and batch sizes; :class:`RequestError`.
- ``models``: each served model checks requests against itself and runs them (:class:`ServedModel`).
- ``jobs``: jobs, their events, and one worker thread per model with a bounded queue and batching.
- ``auth``: bearer tokens stored as salted scrypt hashes (:func:`add_token`, :class:`TokenStore`).
- ``page.html``: the web page, one static file with its own CSS and JavaScript.

The command is ``ebru serve`` (:mod:`ebru.cli.serve`). FastAPI is imported only here, so the rest of ebru
works without it.
"""

from .limits import RequestError, ServeLimits


def create_app(*args, **kwargs):
    """:func:`ebru.serve.app.create_app` (imported on first use: FastAPI loads only when a server is made)."""
    from .app import create_app as make

    return make(*args, **kwargs)


__all__ = ["RequestError", "ServeLimits", "create_app"]
