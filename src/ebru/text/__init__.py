"""ebru.text: discrete (token) diffusion language models and their autoregressive baseline.

- Processes, each a :class:`TextProcess` registered in ``PROCESSES`` (``ebru.text.process``):
  :class:`MaskedDiffusion` (``masked``; MDLM/LLaDA: absorbing state, SUBS, continuous-time
  ELBO), :class:`UniformDiffusion` (``uniform``; tokens replaced by random tokens),
  :class:`BlockDiffusion` (``block``; BD3-LM: autoregressive over blocks, KV cache),
  :class:`Autoregressive` (``ar``; the baseline). A process owns its training draws and loss,
  its likelihood bound, its decoders and whether it can infill. Every model is an
  ``ebru.nets.Transformer`` of the same size; only the attention pattern and the loss differ.
- Decoding: :func:`masked_decode` (ancestral, confidence with low-confidence remasking,
  threshold; semi-autoregressive blocks), :func:`block_decode`, :func:`uniform_decode`,
  :func:`ar_decode`; temperature, top-k, top-p and float64 Gumbel noise (``ebru.text.sampling``).
- :class:`TextModel`: a model directory loaded for generation and infilling.
- Data: :func:`load_corpus` (``austen``, ``fortunes``, ``bible``, or a folder), :class:`CharTokenizer`,
  :class:`BPETokenizer` (:func:`load_tokenizer`, :func:`parse_tokenizer`). Metrics: ``ebru.text.metrics``.
"""

from .ar import Autoregressive, ar_decode
from .block import BlockDiffusion, block_decode
from .config import TextConfig
from .corpus import TextCorpus, load_corpus
from .decode import DECODERS, masked_decode
from .errors import CorpusMissingError, TextInputError
from .infill import parse_template
from .masked import MaskedDiffusion
from .model import Generation, Infill, TextModel
from .process import PROCESSES, TextProcess, make_process
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, parse_tokenizer, train_tokenizer
from .uniform import UniformDiffusion, uniform_decode

__all__ = [
    "DECODERS", "PROCESSES", "Autoregressive", "BPETokenizer", "BlockDiffusion", "CharTokenizer",
    "CorpusMissingError", "Generation", "Infill", "MaskedDiffusion", "TextConfig", "TextCorpus", "TextInputError",
    "TextModel", "TextProcess", "UniformDiffusion", "ar_decode", "block_decode", "load_corpus", "load_tokenizer",
    "make_process", "masked_decode", "parse_template", "parse_tokenizer", "train_tokenizer", "uniform_decode",
]
