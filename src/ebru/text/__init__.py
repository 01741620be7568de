"""ebru.text: discrete (token) diffusion language models and their autoregressive baseline.

- Processes: :class:`MaskedDiffusion` (MDLM/LLaDA: absorbing state, SUBS, continuous-time
  ELBO), :class:`UniformDiffusion` (tokens replaced by random tokens), :class:`BlockDiffusion`
  (BD3-LM: autoregressive over blocks, KV cache), :class:`Autoregressive` (the baseline).
  Every model is an ``ebru.nets.Transformer`` of the same size; only the attention pattern and
  the loss differ.
- Decoding: :func:`masked_decode` (ancestral, confidence with low-confidence remasking,
  threshold; semi-autoregressive blocks), :func:`block_decode`, :func:`uniform_decode`,
  :func:`ar_decode`; temperature, top-k, top-p and float64 Gumbel noise (``ebru.text.sampling``).
- :class:`TextModel`: a model directory loaded for generation and infilling.
- Data: :func:`load_corpus` (``austen``, ``fortunes``, ``bible``, or a folder), :class:`CharTokenizer`,
  :class:`BPETokenizer`. Metrics: ``ebru.text.metrics``.
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
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer, train_tokenizer
from .uniform import UniformDiffusion, uniform_decode

__all__ = [
    "DECODERS", "Autoregressive", "BPETokenizer", "BlockDiffusion", "CharTokenizer", "CorpusMissingError",
    "Generation", "Infill", "MaskedDiffusion", "TextConfig", "TextCorpus", "TextInputError", "TextModel",
    "UniformDiffusion", "ar_decode", "block_decode", "load_corpus", "load_tokenizer", "masked_decode",
    "parse_template", "train_tokenizer", "uniform_decode",
]
