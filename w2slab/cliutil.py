"""Small helpers shared by the ``w2slab`` command line and its sub-commands (grader, research):
a module of its own so that the sub-CLIs need not import the main CLI, which mounts them."""

from __future__ import annotations


def parse_seeds(text: str) -> list[int]:
    """``'1,2,3'`` or ``'1-5'`` (or a mix) -> a list of distinct seeds; one-line ValueError otherwise."""
    seeds: list[int] = []
    backwards = None
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                if int(lo) > int(hi):
                    backwards = (part, int(lo), int(hi))
                seeds += list(range(int(lo), int(hi) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise ValueError(f"bad seed list '{text}': use integers like '1,2,3' or a range like '1-5'") from None
    if backwards:
        part, lo, hi = backwards
        raise ValueError(f"seed range '{part}' is reversed: did you mean '{hi}-{lo}'?")
    if not seeds:
        raise ValueError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seed list '{text}' repeats a seed")
    return seeds
