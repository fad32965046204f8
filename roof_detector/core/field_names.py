"""Free, deterministic names for a user's columns next to the columns we add.

GeoPackage (SQLite) column names are case-insensitive, so ``name`` and
``NAME`` are one column, and a name we add (``area_m2``, ``src_fid``...) may
already be the user's. A user's column is never dropped, merged or shifted:
it keeps its name when that is free, else it gets ``src_<name>``, else
``src_<name>_2``, ``src_<name>_3``... the first that is free. No ``qgis``
import here.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence


def free_names(source_names: Sequence[str], reserved: Iterable[str], prefix: str = "src_") -> List[str]:
    """The output name of each of ``source_names`` (same order), none clashing with ``reserved`` or each other.

    Comparisons ignore case. A source name keeps its name when no reserved name
    and no earlier source name takes it; the others get ``prefix + name``, then
    ``prefix + name + "_2"``, ``"_3"``... skipping every name already taken,
    including source names kept later in the list. The result depends only on
    the inputs.
    """
    taken = {r.lower() for r in reserved}
    out: List[str] = [""] * len(source_names)
    clashing: List[int] = []
    for i, name in enumerate(source_names):
        if name.lower() in taken:
            clashing.append(i)
        else:
            out[i] = name
            taken.add(name.lower())
    for i in clashing:
        base = f"{prefix}{source_names[i]}"
        candidate, n = base, 2
        while candidate.lower() in taken:
            candidate = f"{base}_{n}"
            n += 1
        out[i] = candidate
        taken.add(candidate.lower())
    return out
