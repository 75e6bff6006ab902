"""What ``inducer info`` shows, as data: what is available, and what methods cost on a model.

The command line only prints these (``inducer.cli.main``); the heavy imports happen inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.tasks.base import KINDS


@dataclass
class MethodCount:
    """A method's chosen sizes and parameter counts on one model.

    Attributes:
        method: the method's name.
        sizes: the chosen sizes, e.g. ``"r_k=6, r_v=4"`` (``"layers=top N"`` when layers are dropped).
        parameters: kept at inference (what budgets match; task head excluded).
        percent_of_base: ``parameters`` as a percentage of the base model.
        trained: updated in training (prefix-tuning's MLP and the task head included).
        head: the task head's parameters.
        summary: the preset's one-line account of what it chose and why.
    """

    method: str
    sizes: str
    parameters: int
    percent_of_base: float
    trained: int
    head: int
    summary: str


def available() -> dict[str, list[tuple[str, ...]] | str]:
    """Rows of what the options accept: ``methods`` (name, description), ``tasks`` (name, kind,
    source, description), ``shortcuts`` (name, what), ``recipes`` (name,) and ``offline_install`` (the
    command that installs the offline models)."""
    from ..data.base_models import OFFLINE_INSTALL, SHORTCUTS
    from ..data.tasks import all_tasks
    from ..sizing.presets import PRESETS
    from .recipes import bundled

    tasks = []
    for name, spec in all_tasks().items():
        where = (
            spec.hub[0] + (f" ({spec.hub[1]})" if spec.hub[1] else "") if spec.hub else "offline, built in"
        )
        tasks.append((name, spec.kind, where, spec.description))
    tasks.append((" / ".join(KINDS), "", "--train-file ...", "your own files"))
    return {
        "methods": [(name, spec.description) for name, spec in PRESETS.items()],
        "tasks": tasks,
        "shortcuts": list(SHORTCUTS.items()),
        "offline_install": OFFLINE_INSTALL,
        "recipes": [(name,) for name in sorted(bundled())],
    }


def method_counts(
    model_name: str,
    methods: list[str] | None = None,
    budget: str | int | None = None,
    task: str | None = None,
    num_labels: int = 2,
) -> list[MethodCount]:
    """Each method's sizes and counts on ``model_name`` at ``budget`` (None: the paper's settings).

    ``methods``: default all. ``task`` decides the head: a built-in task's, or one of
    classification / regression / generation (default classification with ``num_labels``).
    """
    from ..data.base_models import load_model
    from ..data.tasks import get_task
    from ..runtime.adapter import attach, count_parameters
    from ..sizing.budget import percent_of_base
    from ..sizing.presets import PRESETS, check_method, preset

    kind, labels = "classification", num_labels
    if task in KINDS:
        kind = task
    elif task:
        spec = get_task(task)
        kind, labels = spec.kind, spec.num_labels or num_labels
    names = methods or list(PRESETS)
    for name in names:
        check_method(name)
    counts = []
    for name in names:
        loaded = load_model(model_name, kind, labels)  # fresh: each method attaches to its own copy
        configs = preset(name, loaded.model, budget)
        attach(loaded.model, list(configs))
        count = count_parameters(loaded.model)
        sizes = ", ".join(f"{k}={v if k != 'layers' else f'top {len(v)}'}" for k, v in configs.sizes.items())
        counts.append(
            MethodCount(
                name,
                sizes or "-",
                configs.count,
                percent_of_base(configs.count, count.base),
                count.trainable,
                count.head,
                configs.summary,
            )
        )
    return counts
