"""The served model: one base, its named adapters, prompts and classification.

Everything here runs on the scheduler's worker thread (the only thread that touches the model), so
adding or deleting an adapter never races a forward pass.
"""

from __future__ import annotations

import copy
import logging
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..app.experiment import read_run_info
from ..data.base_models import load_model, resolve_model_path
from ..errors import ConfigError
from ..io.adapter_format import load_adapter
from ..runtime.adapter import adapter_state, check_adapter_name
from ..runtime.named_adapters import adapters, delete_adapter, route
from .protocol import Limits, ServeError

logger = logging.getLogger("inducer.serve")


def _base_kind(model_name: str, adapter_dirs: dict[str, str]) -> tuple[str, int | None]:
    """``generation`` or ``classification`` (and the label count) from the first adapter's run info,
    else from the base checkpoint's architecture."""
    from transformers import AutoConfig

    for directory in adapter_dirs.values():
        info = read_run_info(directory)
        if info.get("kind"):
            labels = info.get("label_names")
            return info["kind"], (len(labels) if labels else None)
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_name))
    except (OSError, ValueError):  # load_model says what is wrong, in one line
        return "generation", None
    if any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        return "classification", config.num_labels
    return "generation", None


class Engine:
    """A base model with named adapters, ready to decode or classify."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        base_name: str,
        kind: str,
        label_names: list[str] | None = None,
        adapter_root: str | None = None,
        limits: Limits | None = None,
    ):
        self.model, self.tokenizer, self.base_name, self.kind = model, tokenizer, base_name, kind
        self.device = next(model.parameters()).device
        self.adapter_root = Path(adapter_root).resolve() if adapter_root else None
        self.label_names = label_names
        self.limits = limits or Limits()
        config = model.config
        self.max_positions = next(
            (
                getattr(config, n)
                for n in ("max_position_embeddings", "n_positions")
                if isinstance(getattr(config, n, None), int)
            ),
            None,
        )
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Fast tokenizers must not be used by two threads at once: the worker decodes with its own.
        self._decoder = copy.deepcopy(tokenizer)
        # Classification heads are base parameters: keep each adapter's trained head to swap in.
        self._heads: dict[str | None, dict[str, torch.Tensor]] = {None: self._head_values(None)}
        # Replaced, never mutated, by the worker thread: other threads read it without a lock.
        self._names: tuple[str, ...] = tuple(adapters(model))

    @classmethod
    def load(
        cls,
        model_name: str,
        adapter_dirs: dict[str, str],
        adapter_root: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | None = None,
        base_name: str | None = None,
        limits: Limits | None = None,
    ) -> Engine:
        """Load base ``model_name`` and every adapter of ``adapter_dirs`` (name -> folder); requests
        call the base ``base_name`` (default: ``model_name``)."""
        kind, num_labels = _base_kind(model_name, adapter_dirs)
        loaded = load_model(model_name, kind, num_labels, dtype=dtype)
        if kind == "generation" and loaded.is_seq2seq:
            raise ConfigError(
                f"serve: {model_name!r} is an encoder-decoder; serving generates with "
                "decoder-only (causal LM) bases"
            )
        model = loaded.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        labels = next(
            (
                read_run_info(d).get("label_names")
                for d in adapter_dirs.values()
                if read_run_info(d).get("label_names")
            ),
            None,
        )
        engine = cls(model, loaded.tokenizer, base_name or model_name, kind, labels, adapter_root, limits)
        for name, directory in adapter_dirs.items():
            try:
                engine.add_adapter(name, directory, check_root=False)
            except ServeError as err:  # at start-up: the CLI's one-line error
                raise ConfigError(f"--adapter {name}={directory}: {err.message}") from err
        return engine

    # --- adapters -------------------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        """The adapters loaded now (safe to call from any thread)."""
        return list(self._names)

    def add_adapter(self, name: str, path: str, check_root: bool = True, root: Path | None = None) -> None:
        """Load the adapter saved in ``path`` as ``name`` (validated by ``load_adapter``); a
        :class:`ServeError` (4xx) names what is wrong and leaves the model as it was.

        ``check_root`` (requests): ``path`` is relative to ``--adapter-root`` (or absolute inside
        it), the folder and every file in it must resolve (symlinks followed) inside the root, and
        messages name the path as the client gave it, never the server's own paths. ``root``: that
        root instead of ``--adapter-root`` (the adapter store's)."""
        from ..io.adapter_format import AdapterFormatError

        try:
            check_adapter_name(name)
        except ValueError as err:
            raise ServeError(400, str(err), param="name") from err
        if name == self.base_name:
            raise ServeError(400, f"adapter name {name!r} is the base model's name; choose another", "name")
        if name in self._names:
            raise ServeError(
                400, f"an adapter named {name!r} is loaded; DELETE /v1/adapters/{name} first or choose "
                "another name", "name",
            )
        if len(self._names) >= self.limits.max_adapters:
            raise ServeError(
                400, f"{len(self._names)} adapters are loaded, the server's --max-adapters; DELETE one "
                "first", "name",
            )
        root = root or self.adapter_root
        if check_root:
            folder = self._inside_root(path, root)
        else:
            folder = Path(path).expanduser().resolve()
            if not folder.is_dir():
                raise ServeError(400, f"adapter path {path!r} is not a folder", param="path")
        self.check_files(folder, path, root if check_root else None)
        try:
            load_adapter(self.model, folder, name=name)
        except (AdapterFormatError, ValueError, FileNotFoundError) as err:
            message = str(err)
            if check_root:  # the client named `path`: the server's own paths stay private
                message = message.replace(str(folder), path).replace(str(root), "<adapter-root>")
            raise ServeError(400, f"cannot load adapter {name!r}: {message}", param="path") from err
        self.model.eval()
        self._heads[name] = self._head_values(name)
        self._names = tuple(adapters(self.model))
        logger.info("loaded adapter %s from %s", name, folder)

    def _inside_root(self, path: str, root: Path | None) -> Path:
        """The folder ``path`` names under ``root`` (symlinks resolved), or a 4xx."""
        if root is None:
            raise ServeError(
                403, "loading adapters over HTTP is off; start the server with --adapter-root DIR to allow "
                "folders under DIR", code="adapter_admin_disabled",
            )
        folder = (root / path).resolve()  # an absolute path replaces the root
        if not folder.is_relative_to(root):
            raise ServeError(
                400, f"adapter path {path!r} is outside --adapter-root; give a folder under it "
                "(relative to it)", param="path",
            )
        if not folder.is_dir():
            raise ServeError(400, f"adapter path {path!r} is not a folder under --adapter-root", "path")
        return folder

    def check_files(self, folder: Path, path: str, root: Path | None) -> None:
        """Before anything is read: at most ``max_adapter_files`` entries, each a regular file (no
        FIFO or device to block a read on) or folder, inside ``root`` (None: anywhere), files within
        the size limit. Touches no model state: safe on any thread."""
        limits, total = self.limits, 0
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries, 1):
                if count > limits.max_adapter_files:
                    raise ServeError(
                        400, f"adapter path {path!r} holds over {limits.max_adapter_files} entries; an "
                        "adapter folder holds a config and a weights file", param="path",
                    )
                real = Path(os.path.realpath(entry.path))
                if root is not None and not real.is_relative_to(root):
                    raise ServeError(
                        400, f"{entry.name!r} in adapter path {path!r} links outside --adapter-root; "
                        "copy the file in instead", param="path",
                    )
                if real.is_dir():
                    continue
                if not real.is_file():
                    raise ServeError(400, f"{entry.name!r} in adapter path {path!r} is not a regular file",
                                     param="path")  # fmt: skip
                total += real.stat().st_size
        if total > limits.max_adapter_bytes:
            raise ServeError(
                413, f"adapter path {path!r} holds {total} bytes, over the server's --max-adapter-bytes "
                f"({limits.max_adapter_bytes})", param="path",
            )

    def remove_adapter(self, name: str) -> None:
        """Delete adapter ``name`` (the caller made sure no sequence uses it)."""
        delete_adapter(self.model, name)
        self._heads.pop(name, None)
        self._names = tuple(adapters(self.model))
        logger.info("deleted adapter %s", name)

    def _head_values(self, name: str | None) -> dict[str, torch.Tensor]:
        state = adapter_state(self.model)
        if self.kind != "classification":
            return {}
        if name is None:
            from ..runtime.state import task_head_names

            names = task_head_names(self.model)
        else:
            names = state.adapters[name].head
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().clone() for n in names}

    # --- prompts --------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        """A prompt's token ids (a token-id prompt is checked against the vocabulary)."""
        if isinstance(prompt, list):
            if any(t < 0 or t >= len(self.tokenizer) for t in prompt):
                raise ServeError(400, f"prompt token ids must be in [0, {len(self.tokenizer)})", "prompt")
            return prompt
        return self.tokenizer(prompt)["input_ids"]

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """The chat's token ids through the tokenizer's chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ServeError(
                400,
                f"the base model {self.base_name!r} has no chat template; use "
                "/v1/completions with a plain prompt",
                param="messages",
            )
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # a template may raise on roles it does not know
            raise ServeError(400, f"the chat template refused the messages: {err}", "messages") from err
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, tokens: list[int]) -> str:
        """Text of generated tokens (special tokens left out); for the worker thread."""
        return self._decoder.decode(tokens, skip_special_tokens=True)

    # --- classification -------------------------------------------------------------------------
    def classify(self, texts: list[str], adapter: str | None) -> list[dict]:
        """Label and probabilities of each text with ``adapter`` (its own trained head swapped in)."""
        # The worker's own tokenizer: the request side's may be busy on the tokenizer thread.
        batch = self._decoder(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        params = dict(self.model.named_parameters())
        head = {**self._heads[None], **self._heads.get(adapter, {})}
        routing = route(self.model, [adapter] * len(texts)) if adapters(self.model) else nullcontext()
        with torch.no_grad():
            for name, value in head.items():
                params[name].copy_(value)
        with torch.inference_mode():
            with routing:
                logits = self.model(**batch).logits.float()
        probs = torch.softmax(logits, dim=-1).tolist()
        names = self.label_names or [
            self.model.config.id2label.get(i, str(i)) for i in range(logits.shape[-1])
        ]
        return [
            {
                "label": names[max(range(len(p)), key=p.__getitem__)],
                "probabilities": dict(zip(names, p, strict=True)),
            }
            for p in probs
        ]
