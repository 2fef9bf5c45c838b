"""One history from several: per-worker histories of a load run, merged in time order."""

from __future__ import annotations

from typing import Any

import numpy as np

from chaos.history.columns import DIGEST_STR, NO_CODE, NULL_CODE, TABLES, Snapshot, canonical
from chaos.history.events import Event


def merge_snapshots(snaps: list[Snapshot], offsets: list[float]) -> Snapshot:
    strings: list[str] = []
    codes: dict[str, int] = {}
    remaps = []
    for s in snaps:
        remap = np.empty(len(s.strings) + 2, dtype=np.int32)  # the last two map -2, -1 onto themselves
        for i, x in enumerate(s.strings):
            c = codes.get(x)
            if c is None:
                c = codes[x] = len(strings)
                strings.append(x)
            remap[i] = c
        remap[-2], remap[-1] = NULL_CODE, NO_CODE
        remaps.append(remap)
    # every event's time, in the concatenated order, to sort on
    times, tabs = [], []
    for s, off in zip(snaps, offsets, strict=True):
        t = np.empty(len(s.tab), dtype=np.float64)
        for spec in TABLES:
            rows, arrays, _ = s.tables[spec.name]
            if rows:
                t[s.tab == spec.code] = arrays["time"]
        t[s.tab == 0] = [ev.time for ev in s.cold]
        times.append(t + off)
        tabs.append(s.tab)
    all_t = np.concatenate(times) if times else np.empty(0)
    all_tab = np.concatenate(tabs) if tabs else np.empty(0, np.uint8)
    order = np.argsort(all_t, kind="stable")
    new_pos = np.empty(len(order), dtype=np.int64)
    new_pos[order] = np.arange(len(order))
    tab = all_tab[order]
    bases = np.cumsum([0] + [len(s.tab) for s in snaps])
    tables = {}
    for spec in TABLES:
        pos_parts, col_parts, side_parts = [], {c.name: [] for c in spec.columns}, []
        present = {name for s in snaps for name in s.tables[spec.name][1]}
        side_base = 0
        for s, off, remap, base in zip(snaps, offsets, remaps, bases, strict=False):
            rows, arrays, sides = s.tables[spec.name]
            pos_parts.append(new_pos[base + np.flatnonzero(s.tab == spec.code)])
            for c in spec.columns:
                if c.name not in present:
                    continue
                nd = canonical(c, arrays.get(c.name), rows)
                if c.name == "time":
                    nd = nd + off
                elif c.name == "value":
                    nd = np.where(nd >= 0, nd + side_base, nd)
                elif c.kind == "code":
                    nd = remap[nd]
                elif c.name == "v.digest":  # a digest kept as a string: its code moves too
                    kinds = arrays.get("v.digest_kind")
                    if kinds is not None and (kinds == DIGEST_STR).any():
                        nd = nd.copy()
                        sel = kinds == DIGEST_STR
                        nd[sel] = remap[nd[sel].astype(np.int64)]
                col_parts[c.name].append(nd)
            side_parts += sides
            side_base += len(sides)
        pos = np.concatenate(pos_parts)
        perm = np.argsort(pos, kind="stable")
        arrays = {name: np.concatenate(parts)[perm] for name, parts in col_parts.items() if parts}
        tables[spec.name] = (len(pos), arrays, side_parts)
    cold = []
    for s, off, base in zip(snaps, offsets, bases, strict=False):
        for ev in s.cold:
            cold.append(
                Event(
                    int(new_pos[base + ev.index]),
                    ev.time + off,
                    ev.process,
                    ev.type,
                    ev.f,
                    ev.topic,
                    ev.id,
                    ev.value,
                )
            )
    cold.sort(key=lambda e: e.index)
    processes = process_order(tab, tables, cold, strings)
    return Snapshot(
        min((s.start + o for s, o in zip(snaps, offsets, strict=True)), default=0.0),
        tab,
        tables,
        cold,
        strings,
        processes,
    )


def process_order(
    tab: np.ndarray,
    tables: dict[str, tuple[int, dict[str, np.ndarray], list[Any]]],
    cold: list[Event],
    strings: list[str],
) -> list[str]:
    """Processes in order of their first event (what :meth:`History.processes` answers)."""
    first: dict[str, int] = {ev.process: ev.index for ev in reversed(cold)}
    for spec in TABLES:
        rows, arrays, _ = tables[spec.name]
        if not rows:
            continue
        codes, at = np.unique(arrays["process"], return_index=True)
        index = np.flatnonzero(tab == spec.code)[at]
        for c, i in zip(codes.tolist(), index.tolist(), strict=True):
            name = strings[c]
            if i < first.get(name, len(tab)):
                first[name] = i
    return sorted(first, key=first.__getitem__)
