"""The age and race groups of train_meta.csv, defined once: fold strata and per-group reports use them."""
from __future__ import annotations

import numpy as np

AGE_EDGES = (3, 10, 20, 40, 60)  # fold strata: 0-2, 3-9, 10-19, 20-39, 40-59, 60+
REPORT_AGE_EDGES = AGE_EDGES[:3]  # reports merge the adult strata: 0-2, 3-9, 10-19, 20+
RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}  # UTKFace coding


def age_bucket(ages: np.ndarray, edges: tuple[int, ...] = AGE_EDGES) -> np.ndarray:
    """Bucket index per age (-1 for unknown): 0 below edges[0], 1 up to edges[1] - 1, …"""
    ages = np.asarray(ages)
    return np.where(ages < 0, -1, np.searchsorted(edges, ages, side="right"))


def age_groups(edges: tuple[int, ...] = REPORT_AGE_EDGES) -> dict[str, tuple[int, int]]:
    """Group name -> inclusive (low, high) ages, from the edges: {'0-2': (0, 2), …, '20+': (20, 10_000)}."""
    lows = (0, *edges)
    highs = tuple(e - 1 for e in edges) + (10_000,)
    return {(f"{lo}-{hi}" if hi < 10_000 else f"{lo}+"): (lo, hi) for lo, hi in zip(lows, highs)}


def group_masks(ages: np.ndarray | None, races: np.ndarray | None) -> dict[str, np.ndarray]:
    """Boolean row masks of the report's age groups and of each known race."""
    masks: dict[str, np.ndarray] = {}
    if ages is not None:
        for name, (lo, hi) in age_groups().items():
            masks[f"age {name}"] = (ages >= lo) & (ages <= hi)
    if races is not None:
        for code in sorted(set(races.tolist()) - {"", "-1"}):  # unknown race codes are not a group
            masks[f"race {RACES.get(code, code)}"] = races == code
    return masks


def ordered_groups(names) -> list[str]:
    """Age groups in age order, then races by name (JSON round trips sort keys alphabetically)."""
    ages = [f"age {a}" for a in age_groups()]
    return [g for g in ages if g in names] + sorted(g for g in names if g not in ages)
