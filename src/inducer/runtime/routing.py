"""Which adapter each row of a batch uses: the per-model router behind ``set_adapter`` and ``route``.

Every module and hook that ``attach`` adds belongs to one named adapter. At each forward, the
model's :class:`Router` says which rows that adapter serves: all of them (it is active and nothing
is routed), none (inactive, disabled, or routed to no row) or a row mask. A hook serving some rows
computes its update for the whole batch and keeps it on those rows only (``torch.where``), so a
batch routed to eight adapters costs one batched pass per adapter's small update, never a Python
loop over rows; its gradient flows from its own rows only. Prefix keys routed to some rows are
masked out (``finfo.min``) for the others.

The router is a plain object kept on the model's attach state (and referenced by the model's
extensions and hooks), never global: two models route independently, and ``copy.deepcopy`` of a
model gives the copy its own router.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UsageError
from ..methods.base import MethodHook
from ..methods.extension import AttentionExtension, attention_extensions

# The attribute naming the adapter (and its router) of an extension that attach added.
ADAPTER_TAG = "_inducer_adapter"


class Router:
    """The model's active adapters, its per-row routing and whether adapters are disabled."""

    def __init__(self) -> None:
        self.active: list[str] = []
        self.routes: list[str | None] | None = None
        self.disabled = False
        self._masks: dict = {}  # (batch, device) -> {adapter: row mask or True}, for the current routes

    def set_routes(self, routes: Sequence[str | None] | None) -> None:
        """Route row i of every batch to ``routes[i]`` (None: the base); ``None`` ends routing."""
        self.routes = None if routes is None else list(routes)
        self._masks = {}

    def rows(self, adapter: str, batch: int, device: torch.device) -> bool | torch.Tensor:
        """True (every row), False (no row) or a (batch,) bool mask of the rows ``adapter`` serves."""
        if self.disabled:
            return False
        if self.routes is None:
            return adapter in self.active
        key = (batch, device)
        masks = self._masks.get(key)
        if masks is None:
            masks = self._masks[key] = self._row_masks(batch, device)
        return masks.get(adapter, False)

    def _row_masks(self, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        routes = self.routes
        if batch % len(routes):
            raise UsageError(f"inducer.route: {len(routes)} adapter names for a batch of {batch} rows; "
                             "give one name (or None) per row of the batch")
        # Beam search and num_return_sequences repeat each row k times in place (repeat_interleave).
        repeat = batch // len(routes)
        names = [name for name in routes for _ in range(repeat)]
        # An adapter serving every row is True (no mask to apply), one serving none is absent.
        return {name: True if all(n == name for n in names) else torch.tensor([n == name for n in names],
                                                                               device=device)
                for name in dict.fromkeys(names) if name is not None}


def check_routes(routes, known, caller: str) -> list[str | None]:
    """``routes`` as a list, refused with one line unless it names one known adapter (or None) per row."""
    if isinstance(routes, str) or not isinstance(routes, Sequence) or not len(routes):
        raise UsageError(f"{caller}: give a list with one adapter name (or None) per row, got {routes!r}")
    unknown = [name for name in routes if name is not None and name not in known]
    if unknown:
        raise UsageError(f"{caller}: no adapter named {unknown[0]!r}; the model has {list(known)}")
    return list(routes)


def generate_with_adapter_names(model: nn.Module, *args, adapter_names=None, **kwargs):
    """The model's ``generate``, taking PEFT's ``adapter_names=`` (one adapter name or None per row),
    which transformers' generate would refuse as an unused keyword. Bound to each adapted model."""
    generate = type(model).generate
    if adapter_names is None:
        return generate(model, *args, **kwargs)
    state = model._inducer_state
    names = check_routes(adapter_names, state.adapters, "generate(adapter_names=)")
    before = state.router.routes
    state.router.set_routes(names)
    try:
        return generate(model, *args, **kwargs)
    finally:
        state.router.set_routes(before)


def keep_rows(rows: bool | torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` on the rows ``rows`` selects, ``old`` elsewhere (batch dimension first). Outputs that
    are tuples (hidden states, extras: a mixture's router logits) are kept row-wise in their first
    element; the extras are the base's, the same for both."""
    if rows is True:
        return new
    if rows is False:
        return old
    if isinstance(new, tuple):
        return (keep_rows(rows, new[0], old[0]), *new[1:])
    return torch.where(rows.view(-1, *([1] * (new.dim() - 1))), new, old)


class RoutedHooks(MethodHook):
    """The method hooks of every adapter at one place of one module (its forward hook or pre-hook),
    run for the rows each adapter serves.

    Without routing, the active adapters' hooks run in ``set_adapter``'s order. With routing, the
    hooks of one kind whose class has a ``routed(items, module, *args)`` classmethod (items:
    ``(hook, rows)`` pairs) run at once, each row with its adapter's tensors (LoRA gathers each
    row's A and B: one batched product for all adapters); the others run one adapter at a time,
    kept on its rows.
    """

    def __init__(self, router: Router, pre: bool, with_kwargs: bool):
        self.router, self.pre, self.with_kwargs = router, pre, with_kwargs
        self.items: list[tuple[str, MethodHook]] = []  # (adapter, its hook), in registration order

    def __call__(self, module, *args):
        router = self.router
        if router.disabled:
            return None
        if router.routes is None:
            return self._run(module, args, [(hook, True) for name in router.active
                                            for adapter, hook in self.items if adapter == name])
        tensor = _first_tensor(args)
        if tensor is None:
            return None
        used = [(hook, rows) for adapter, hook in self.items
                if (rows := router.rows(adapter, tensor.shape[0], tensor.device)) is not False]
        return self._run(module, args, used)

    def _run(self, module, args, used: list):
        if not used:
            return None
        if self.pre:  # pre-hooks stash inputs for the output hook: they see the whole batch
            changed = None
            for hook, _ in used:
                result = hook(module, *args)
                if result is not None:
                    changed = result
                    args = ((result if isinstance(result, tuple) else (result,)),) if not self.with_kwargs \
                        else result
            return changed
        *inputs, output = args
        if all(rows is True for _, rows in used):  # no routing: the active adapters' hooks in turn
            for hook, _ in used:
                new = hook(module, *inputs, output)
                output = output if new is None else new
            return output
        kinds: dict[type, list] = {}
        for hook, rows in used:
            kinds.setdefault(type(hook), []).append((hook, rows))
        for kind, items in kinds.items():
            grouped = getattr(kind, "routed", None)
            result = grouped(items, module, *inputs, output) if grouped and len(items) > 1 else None
            if result is not None:
                output = result
                continue
            for hook, rows in items:
                new = hook(module, *inputs, output)
                output = output if new is None else keep_rows(rows, new, output)
        return output


def _first_tensor(args) -> torch.Tensor | None:
    for arg in args:
        values = arg.values() if isinstance(arg, dict) else arg if isinstance(arg, tuple) else (arg,)
        for value in values:
            if isinstance(value, torch.Tensor):
                return value
    return None


def wrap_new_hooks(model: nn.Module, before: set[int], adapter: str, router: Router) -> None:
    """Move every :class:`MethodHook` of ``model`` not in ``before`` (hook ids) into its module's
    :class:`RoutedHooks` (made at the new hook's place if the module has none yet)."""
    for module in model.modules():
        for hooks, with_kwargs in ((module._forward_hooks, module._forward_hooks_with_kwargs),
                                   (module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs)):
            for key, hook in list(hooks.items()):
                if not isinstance(hook, MethodHook) or isinstance(hook, RoutedHooks) or id(hook) in before:
                    continue
                group = next((h for h in hooks.values() if isinstance(h, RoutedHooks)
                              and h.pre == hook.pre and h.with_kwargs == hook.with_kwargs), None)
                if group is None:
                    group = hooks[key] = RoutedHooks(router, hook.pre, hook.with_kwargs)
                else:
                    del hooks[key]
                    with_kwargs.pop(key, None)
                group.items.append((adapter, hook))


def method_hook_ids(model: nn.Module) -> set[int]:
    """Ids of every method hook on ``model`` now (those inside RoutedHooks included)."""
    ids = set()
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for hook in hooks.values():
                if isinstance(hook, RoutedHooks):
                    ids.update(id(inner) for _, inner in hook.items)
                if isinstance(hook, MethodHook):
                    ids.add(id(hook))
    return ids


def remove_hooks_except(model: nn.Module, keep: set[int]) -> None:
    """Remove the method hooks whose ids are not in ``keep`` (what a failed attach registered)."""
    for module in model.modules():
        for hooks, with_kwargs in ((module._forward_hooks, module._forward_hooks_with_kwargs),
                                   (module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs)):
            for key in [k for k, h in hooks.items() if isinstance(h, MethodHook) and id(h) not in keep]:
                del hooks[key]
                with_kwargs.pop(key, None)


def remove_adapter_hooks(model: nn.Module, adapter: str) -> None:
    """Remove the hooks of one adapter from every module of ``model``."""
    for module in model.modules():
        for hooks, with_kwargs in ((module._forward_hooks, module._forward_hooks_with_kwargs),
                                   (module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs)):
            for key, group in list(hooks.items()):
                if isinstance(group, RoutedHooks):
                    group.items = [(name, hook) for name, hook in group.items if name != adapter]
                    if not group.items:
                        del hooks[key]
                        with_kwargs.pop(key, None)


class RouteFromKeyword(MethodHook):
    """Forward pre-hook on the model: ``model(..., adapter_names=[...])`` routes that call (PEFT's
    spelling; ``generate`` passes the keyword on to every step)."""

    pre = True
    with_kwargs = True

    def __init__(self, router: Router):
        self.router = router
        self.saved: list = []  # routes before each routed call, restored by EndRouteFromKeyword

    def __call__(self, module, args, kwargs):
        if "adapter_names" not in kwargs:
            self.saved.append(False)
            return None
        names = check_routes(kwargs.pop("adapter_names"), module._inducer_state.adapters, "adapter_names")
        self.saved.append(self.router.routes)
        self.router.set_routes(names)
        return args, kwargs


class EndRouteFromKeyword(MethodHook):
    """Forward hook on the model, called even when the forward fails: ends the call's routing."""

    def __init__(self, start: RouteFromKeyword):
        self.start = start

    def register(self, module: nn.Module) -> None:
        """Register to run even when the forward raises."""
        module.register_forward_hook(self, always_call=True)

    def __call__(self, _module, _inputs, _output):
        if self.start.saved:
            routes = self.start.saved.pop()
            if routes is not False:
                self.start.router.set_routes(routes)


def tag_extensions(modules: list[nn.Module], adapter: str, router: Router) -> None:
    """Mark the extensions among ``modules`` (and their children) as ``adapter``'s."""
    for module in modules:
        for child in module.modules():
            if isinstance(child, AttentionExtension):
                setattr(child, ADAPTER_TAG, (adapter, router))


def routed_extensions(module: nn.Module,
                      query: torch.Tensor) -> list[tuple[AttentionExtension, bool | torch.Tensor]]:
    """The extensions of an attention module serving some rows of this batch, with those rows."""
    used = []
    for extension in attention_extensions(module):
        tag = getattr(extension, ADAPTER_TAG, None)
        rows = True if tag is None else tag[1].rows(tag[0], query.shape[0], query.device)
        if rows is not False:
            used.append((extension, rows))
    tags = [getattr(extension, ADAPTER_TAG, None) for extension, _ in used]
    if len({tag[0] for tag in tags if tag is not None}) < 2:
        return used
    # Several active adapters compose in the order set_adapter listed them (stable sort).
    order = {name: i for i, name in enumerate(next(t for t in tags if t is not None)[1].active)}
    rank = [order.get(tag[0], len(order)) if tag else len(order) for tag in tags]
    return [used[i] for i in sorted(range(len(used)), key=rank.__getitem__)]


def extend(extension: AttentionExtension, rows: bool | torch.Tensor, query: torch.Tensor,
           key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None):
    """``extension.extend`` for the rows it serves: added keys are masked out for the other rows."""
    if rows is True:
        return extension.extend(key, value, mask)
    new_key, new_value, new_mask = extension.extend(key, value, mask)
    added = new_key.shape[2] - key.shape[2]
    if added == 0:
        return new_key, new_value, new_mask
    batch = new_key.shape[0]
    if new_mask is None:
        new_mask = query.new_zeros(batch, 1, query.shape[2], new_key.shape[2])
    new_mask = new_mask.expand(batch, *new_mask.shape[1:]).clone()
    # Extensions prepend their keys (see methods.extension): the first ``added`` columns are theirs.
    hidden = (~rows).view(-1, 1, 1, 1) & (torch.arange(new_key.shape[2], device=key.device) < added)
    return new_key, new_value, new_mask.masked_fill(hidden, torch.finfo(new_mask.dtype).min)


def compose(routed: list, query: torch.Tensor, out: torch.Tensor, lse, scaling: float, dropout: float,
            training: bool) -> torch.Tensor:
    """Every routed extension's ``compose``, each kept on the rows it serves; several extensions of
    one kind serving different rows go through their class's ``compose_routed(items, ...)`` at
    once where it has one (inducers: each row with its adapter's tensors, one batched pass)."""
    kinds: dict[type, list] = {}
    for extension, rows in routed:
        kinds.setdefault(type(extension), []).append((extension, rows))
    for kind, items in kinds.items():
        grouped = getattr(kind, "compose_routed", None)
        if grouped is not None and len(items) > 1 and all(rows is not True for _, rows in items):
            result = grouped(items, query, out, lse, scaling, dropout, training)
            if result is not None:
                out = result
                continue
        for extension, rows in items:
            out = keep_rows(rows, extension.compose(query, out, lse, scaling, dropout, training), out)
    return out
