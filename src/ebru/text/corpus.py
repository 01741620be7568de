"""Text corpora from Debian packages and folders, each with one held-out part for evaluation.

- ``austen``: Jane Austen's six novels from the Debian package ``r-cran-janeaustenr``, read
  from its R lazy-load database with the ``rdata`` package — no R needed. The package is
  unpacked, not installed (installing it pulls in R): ``make data`` does it. The whole of
  *Persuasion* is held out.
- ``fortunes``: the quotes of the Debian ``fortunes`` packages; every 20th quote is held out.
- ``bible``: the King James Bible from Debian ``bible-kjv`` (its ``bible`` program decodes the
  text); the Book of Revelation is held out.
- a folder: every UTF-8 text file under it, in sorted order; the last file is held out (or
  the last tenth of the text when there is a single file).

:func:`load_corpus` takes a name or a folder path. A missing corpus raises
:class:`CorpusMissingError` with one line naming the install step.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import CorpusMissingError

DATA_ROOT_ENV = "EBRU_TEXT_DATA"
DEFAULT_DATA_ROOT = "/usr/local/share/ebru/text"
AUSTEN_BOOKS = {
    "sensesensibility": "Sense and Sensibility", "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
_AUSTEN_INSTALL = ("run 'make data' as root, or: apt-get download r-cran-janeaustenr && "
                   f"dpkg-deb -x r-cran-janeaustenr_*.deb {DEFAULT_DATA_ROOT}/janeaustenr")
CORPUS_NAMES = ("austen", "fortunes", "bible")


@dataclass
class TextCorpus:
    """Documents for training and for evaluation, with provenance."""

    name: str
    train: list[str]
    held_out: list[str]
    held_out_name: str
    source: str
    separator: str = "\n\n"  # placed between documents when they are joined into one stream

    @property
    def train_text(self) -> str:
        """The training documents joined by ``separator``: one stream of text."""
        return self.separator.join(self.train)

    @property
    def held_out_text(self) -> str:
        """The held-out documents joined by ``separator`` (for bits per character)."""
        return self.separator.join(self.held_out)

    @property
    def content_hash(self) -> str:
        """SHA-256 (hex) of every document, training then held out, as UTF-8: the corpus's identity."""
        h = hashlib.sha256()
        for part in (*self.train, "\x00held-out\x00", *self.held_out):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()


def data_root() -> Path:
    """Where unpacked corpora live: ``$EBRU_TEXT_DATA`` or ``/usr/local/share/ebru/text``."""
    return Path(os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT))


def _austen_dir() -> Path | None:
    rel = Path("usr/lib/R/site-library/janeaustenr/data")
    for base in (data_root() / "janeaustenr" / rel, Path("/") / rel):
        if (base / "Rdata.rdb").is_file() and (base / "Rdata.rdx").is_file():
            return base
    return None


def _reflow(lines: list[str]) -> str:
    """Wrapped lines to paragraphs: lines of a paragraph joined by spaces, paragraphs by newlines."""
    paragraphs, cur = [], []
    for line in lines:
        line = line.strip()
        if line:
            cur.append(line)
        elif cur:
            paragraphs.append(" ".join(cur))
            cur = []
    if cur:
        paragraphs.append(" ".join(cur))
    return "\n".join(paragraphs)


def austen_books() -> dict[str, str]:
    """The six novels, title -> text (paragraphs one per line), read without R."""
    base = _austen_dir()
    if base is None:
        raise CorpusMissingError(f"the Jane Austen corpus is not installed: {_AUSTEN_INSTALL}")
    try:
        import rdata
    except ImportError:
        raise CorpusMissingError("reading the Jane Austen corpus needs the rdata package: pip install rdata") from None

    def convert(raw: bytes):
        with warnings.catch_warnings():  # the lazy-load blobs carry no file header; rdata says so
            warnings.simplefilter("ignore", UserWarning)
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = convert(gzip.decompress((base / "Rdata.rdx").read_bytes()))
    blob = (base / "Rdata.rdb").read_bytes()
    books = {}
    for key, (offset, size) in index["variables"].items():
        key = str(key)
        if key in AUSTEN_BOOKS:  # each record: 4-byte length, then a zlib stream
            lines = convert(zlib.decompress(blob[int(offset) + 4:int(offset) + int(size)]))
            books[AUSTEN_BOOKS[key]] = _reflow([str(x) for x in lines])
    if len(books) != len(AUSTEN_BOOKS):
        raise CorpusMissingError(f"the Jane Austen corpus in {base} is incomplete: {_AUSTEN_INSTALL}")
    return {title: books[title] for title in AUSTEN_BOOKS.values()}


def austen() -> TextCorpus:
    """Jane Austen's novels; *Persuasion* held out. Raises :class:`CorpusMissingError` naming the install step."""
    books = austen_books()
    held = "Persuasion"
    return TextCorpus("austen", [t for k, t in books.items() if k != held], [books[held]], held,
                      "Debian r-cran-janeaustenr 1.0.0 (Project Gutenberg texts)")


FORTUNES_DIR = Path("/usr/share/games/fortunes")


def fortunes(root: str | Path = FORTUNES_DIR) -> TextCorpus:
    """The quotes of the fortunes files under ``root`` (UTF-8, bad bytes replaced); every 20th held out."""
    root = Path(root)
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))
    if not files:
        raise CorpusMissingError(f"the fortunes corpus is not installed in {root}: run 'make data' as root, or: "
                                 "apt-get install fortunes")
    quotes = []
    for p in files:
        text = p.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
        quotes += [q.strip("\n") for q in text.split("\n%\n") if q.strip()]
    held = [q for i, q in enumerate(quotes) if i % 20 == 19]
    train = [q for i, q in enumerate(quotes) if i % 20 != 19]
    return TextCorpus("fortunes", train, held, "every 20th quote", "Debian fortunes, fortunes-min", separator="\n%\n")


def bible() -> TextCorpus:
    """The KJV Bible, one document per book, from the ``bible`` program (UTF-8); Revelation held out."""
    exe = shutil.which("bible")
    if exe is None:
        raise CorpusMissingError("the KJV Bible is not installed: run 'make data' as root, "
                                 "or: apt-get install bible-kjv")
    try:
        out = subprocess.run([exe, "-f", "gen1:1-rev22:21"], capture_output=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise CorpusMissingError(f"the bible program failed ({e}): reinstall with apt-get install bible-kjv") from None
    books: dict[str, list[str]] = {}
    for line in out.decode("utf-8", errors="replace").splitlines():
        ref, _, verse = line.partition(" ")
        if verse:
            book = ref.rstrip("0123456789:")
            books.setdefault(book, []).append(verse.strip())
    texts = ["\n".join(v) for v in books.values()]
    if len(texts) < 2:
        raise CorpusMissingError("the bible program printed no text: reinstall with apt-get install bible-kjv")
    return TextCorpus("bible", texts[:-1], texts[-1:], "Revelation", "Debian bible-kjv 4.38 (public domain)")


def folder(path: str | Path) -> TextCorpus:
    """Every non-empty UTF-8 text file under ``path`` (sorted; files that are not UTF-8 are skipped as binary).

    The last file is held out, or the last tenth of a single file.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CorpusMissingError(f"text folder not found: {root}")
    docs: list[tuple[str, str]] = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            try:
                text = p.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # not a UTF-8 text file
            if text.strip():
                docs.append((str(p.relative_to(root)), text.replace("\r\n", "\n").strip("\n")))
    if not docs:
        raise CorpusMissingError(f"the folder {root} holds no non-empty UTF-8 text files: the corpus is empty")
    if len(docs) == 1:
        name, text = docs[0]
        cut = len(text) - max(1, len(text) // 10)
        return TextCorpus(root.name, [text[:cut]], [text[cut:]], f"last tenth of {name}", f"folder {root}")
    return TextCorpus(root.name, [t for _, t in docs[:-1]], [docs[-1][1]], docs[-1][0], f"folder {root}")


def load_corpus(spec: str | Path) -> TextCorpus:
    """A corpus by name (``austen``, ``fortunes``, ``bible``) or a folder path."""
    name = str(spec).strip()
    loaders = {"austen": austen, "fortunes": fortunes, "bible": bible}
    if name.lower() in loaders and not Path(name).exists():
        return loaders[name.lower()]()
    if Path(name).expanduser().exists() or "/" in name or name.startswith((".", "~")):
        return folder(name)
    raise CorpusMissingError(f"unknown corpus {name!r}: use {', '.join(CORPUS_NAMES)}, or a folder of text files")
