"""Making ``"INDUCER"`` a PEFT type: extend PEFT's closed ``PeftType`` enum, then register the method.

``peft.utils.register_peft_method`` refuses a name that is not already a ``PeftType`` member, and
PEFT has no entry-point discovery, so an outside package must add the member itself, when it is
imported. A plain string type is not enough: transformers' ``delete_adapter`` calls
``peft_type.value``, and PEFT compares and hashes types as members. The member is added the way the
standard ``enum`` module stores members (no new dependency such as ``aenum``); Python 3.10-3.13 keep
them in the same three places, which the tests check through PEFT's own look-ups.
"""

from __future__ import annotations

from peft.utils import PeftType

NAME = "inducer"  # PEFT's method name; its prefix, "inducer_", starts the name of every weights dict
PREFIX = f"{NAME}_"
__all__ = ["NAME", "PEFT_TYPE", "PREFIX", "extend_peft_type", "register"]


def extend_peft_type(value: str) -> PeftType:
    """The ``PeftType`` member ``value`` (upper case), added to the enum if it is not there yet."""
    existing = PeftType._value2member_map_.get(value)
    if existing is not None:
        return existing
    member = str.__new__(PeftType, value)
    member._name_ = member._value_ = value
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    # type.__setattr__: the enum's own __setattr__ refuses new members on a built enum.
    type.__setattr__(PeftType, value, member)
    PeftType._member_map_[value] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(value)
    return member


PEFT_TYPE = extend_peft_type(NAME.upper())


def register(config_cls: type, model_cls: type) -> None:
    """``register_peft_method`` for inducer, once per process (importing the package twice, or a
    reload in a notebook, must not raise PEFT's "already a PEFT method" error)."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import register_peft_method

    if PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE) is not None:
        # Re-registration (a reload): point PEFT at the current classes.
        PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = model_cls
        PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PREFIX
        return
    register_peft_method(name=NAME, config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)
