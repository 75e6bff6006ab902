"""``e2e-synthetic``: generated data in the E2E NLG challenge's format, for offline generation runs.

Each meaning representation (MR) draws a name and 2-6 further attributes of the E2E schema
(``name[...], eatType[...], food[...], priceRange[...], customer rating[...], area[...],
familyFriendly[...], near[...]``) from a fixed-seed generator, and is rendered by every one of
three sentence plans (different orders and wordings), giving three references per MR, one row per
(MR, reference) as in the real dataset (columns ``meaning_representation``, ``human_reference``).

Sizes (fixed, seed 2017): 600 train MRs (1,800 rows), 60 validation MRs (180 rows),
60 test MRs (180 rows). Names of train and test restaurants do not overlap.
"""

from __future__ import annotations

import random

SIZES = {"train": 600, "validation": 60, "test": 60}
SEED = 2017
NAMES = [
    "The Eagle",
    "The Mill",
    "Blue Spice",
    "Zizzi",
    "Cotto",
    "The Punter",
    "Aromi",
    "The Wrestlers",
    "Fitzbillies",
    "Giraffe",
    "Alimentum",
    "Strada",
    "Wildwood",
    "Loch Fyne",
    "Clowns",
    "Bibimbap House",
    "The Vaults",
    "Browns Cambridge",
    "The Olive Grove",
    "Midsummer House",
    "The Phoenix",
    "Taste of Cambridge",
    "The Golden Curry",
    "Green Man",
    "The Cricketers",
    "The Twenty Two",
    "Cocum",
    "The Plough",
]
TEST_NAMES = [
    "The Dumpling Tree",
    "Travellers Rest Beefeater",
    "The Rice Boat",
    "Café Sicilia",
    "The Waterman",
    "Café Brazil",
]
NEAR = [
    "Burger King",
    "Café Rouge",
    "The Sorrento",
    "Avalon",
    "Raja Indian Cuisine",
    "Yippee Noodle Bar",
    "Express by Holiday Inn",
    "Crowne Plaza Hotel",
    "The Portland Arms",
    "Rainbow Vegetarian Café",
]
VALUES = {
    "eatType": ["restaurant", "pub", "coffee shop"],
    "food": ["Italian", "French", "English", "Chinese", "Japanese", "Indian", "Fast food"],
    "priceRange": ["cheap", "moderate", "high", "less than £20", "£20-25", "more than £30"],
    "customer rating": ["low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"],
    "area": ["city centre", "riverside"],
    "familyFriendly": ["yes", "no"],
    "near": NEAR,
}
ORDER = ["name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near"]


def _price(value: str) -> str:
    return f"a price range of {value}" if value[0] in "£lm" else f"{value} prices"


def _rating(value: str) -> str:
    return (
        f"a customer rating of {value}"
        if "out of" in value
        else f"an {value} customer rating"
        if value[0] in "aeiou"
        else f"a {value} customer rating"
    )


def _family(value: str, style: int) -> str:
    if style == 0:
        return "is family friendly" if value == "yes" else "is not family friendly"
    return "welcomes children" if value == "yes" else "does not welcome children"


def render(mr: dict[str, str], plan: int) -> str:
    """One reference text for ``mr`` by sentence plan 0, 1 or 2."""
    name, kind = mr["name"], mr.get("eatType", "place")
    food = f"{mr['food']} food" if "food" in mr else None
    where = f"in the {mr['area']}" if "area" in mr else None
    near = f"near {mr['near']}" if "near" in mr else None
    details = [
        x
        for x in (
            _price(mr["priceRange"]) if "priceRange" in mr else None,
            _rating(mr["customer rating"]) if "customer rating" in mr else None,
        )
        if x
    ]
    if plan == 0:
        first = " ".join(
            x for x in (f"{name} is a {kind}", f"serving {food}" if food else None, where, near) if x
        )
        rest = [
            f"It has {' and '.join(details)}" if details else None,
            f"It {_family(mr['familyFriendly'], 0)}" if "familyFriendly" in mr else None,
        ]
    elif plan == 1:
        first = " ".join(x for x in (f"There is a {kind} called {name}", near, where) if x)
        rest = [
            f"It offers {food}" + (f" with {' and '.join(details)}" if details else "")
            if food
            else (f"It has {' and '.join(details)}" if details else None),
            f"The {kind} {_family(mr['familyFriendly'], 1)}" if "familyFriendly" in mr else None,
        ]
    else:
        lead = " ".join(x for x in (f"{food.capitalize()}" if food else None, where) if x)
        first = f"{lead} can be found at {name}" if lead else f"{name} is a {kind}"
        first += f", a {kind} {near}" if near and lead else (f" {near}" if near else "")
        rest = [
            f"{name} has {' and '.join(details)}" if details else None,
            f"{name} {_family(mr['familyFriendly'], 0)}" if "familyFriendly" in mr else None,
        ]
    return ". ".join(s for s in [first, *rest] if s) + "."


def meaning_representation(mr: dict[str, str]) -> str:
    """The E2E string form: ``name[The Eagle], eatType[pub], ...``."""
    return ", ".join(f"{key}[{mr[key]}]" for key in ORDER if key in mr)


def generate(split: str, count: int, seed: int = SEED) -> list[dict]:
    """``count`` MRs of ``split``, three rows (one per reference) each."""
    rng = random.Random(f"{seed}-{split}")
    names = TEST_NAMES if split == "test" else NAMES
    rows = []
    for _ in range(count):
        mr = {"name": rng.choice(names)}
        for key in rng.sample(ORDER[1:], rng.randint(2, 6)):
            mr[key] = rng.choice(VALUES[key])
        text = meaning_representation(mr)
        rows += [{"meaning_representation": text, "human_reference": render(mr, plan)} for plan in range(3)]
    return rows


def load_raw():
    """The raw splits as a ``datasets.DatasetDict`` in the E2E dataset's columns."""
    import datasets

    return datasets.DatasetDict(
        {split: datasets.Dataset.from_list(generate(split, n)) for split, n in SIZES.items()}
    )
