"""Memory: the broker's resident memory does not grow without bound across the fault cycles of a soak.

The soak samples the broker's RSS (``/proc/<pid>/status``) after every cycle and
records it (``rss`` events of process ``lab``, value ``{"cycle", "pid",
"rss_bytes"}``). The bound: after the warm-up (the first ``warmup`` fraction of
the samples, at least 3: caches, pools and dedup windows fill up then), every
sample stays within ``factor`` x the warm-up's median + ``slack_mb``. A broker
that keeps something per message, per connection or per restart for ever
crosses it over a hundred cycles; one that is merely busy does not. A restart
(a kill) starts a fresh process: its samples are judged by the same bound, since
hydrating the same outstanding work must not cost more each time.
"""

from __future__ import annotations

import statistics
from typing import Any

from chaos.checkers.stats import listed
from chaos.checkers.verdict import Verdict, failed, passed, unknown
from chaos.history import History

NAME = "memory-bound"
MB = 1 << 20


def rss_samples(history: History) -> list[dict[str, Any]]:
    """The recorded RSS samples in order: ``{"cycle", "pid", "rss_bytes", "t_s"}``."""
    out = []
    for ev in history.by_f("rss"):
        v = ev.value if isinstance(ev.value, dict) else {}
        if isinstance(v.get("rss_bytes"), int):
            out.append(
                {
                    "cycle": v.get("cycle"),
                    "pid": v.get("pid"),
                    "rss_bytes": v["rss_bytes"],
                    "t_s": history.rel(ev.time),
                }
            )
    return out


def check_memory_bound(
    history: History,
    *,
    factor: float = 1.5,
    slack_mb: float = 32.0,
    warmup: float = 0.2,
    min_samples: int = 6,
) -> Verdict:
    if factor < 1 or slack_mb < 0 or not 0 < warmup < 1:
        raise ValueError(
            f"need factor >= 1, slack_mb >= 0, 0 < warmup < 1; got {factor}, {slack_mb}, {warmup}"
        )
    samples = rss_samples(history)
    ev: dict[str, Any] = {
        "bound_rule": f"rss <= {factor} x warm-up median + {slack_mb} MiB",
        "samples": len(samples),
        "series_mb": [round(s["rss_bytes"] / MB, 2) for s in samples],
    }
    if len(samples) < min_samples:
        return unknown(
            NAME, f"only {len(samples)} memory samples, need {min_samples}: soak for more cycles.", **ev
        )
    n_warm = max(3, int(len(samples) * warmup))
    base = statistics.median(s["rss_bytes"] for s in samples[:n_warm])
    bound = factor * base + slack_mb * MB
    over = [s for s in samples[n_warm:] if s["rss_bytes"] > bound]
    ev.update(
        warmup_samples=n_warm,
        warmup_median_mb=round(base / MB, 2),
        bound_mb=round(bound / MB, 2),
        peak_mb=round(max(s["rss_bytes"] for s in samples) / MB, 2),
        last_mb=round(samples[-1]["rss_bytes"] / MB, 2),
        over=listed({**s, "rss_mb": round(s["rss_bytes"] / MB, 2)} for s in over),
    )
    if over:
        first = over[0]
        first_mb = round(first["rss_bytes"] / MB, 1)
        return failed(
            NAME,
            f"the broker's memory grew past the bound: {len(over)} of {len(samples) - n_warm} samples after "
            f"the warm-up over {ev['bound_mb']} MiB (first: {first_mb} MiB after cycle {first['cycle']}; "
            f"warm-up median {ev['warmup_median_mb']} MiB).",
            **ev,
        )
    return passed(
        NAME,
        f"the broker's memory stayed within {ev['bound_mb']} MiB over {len(samples)} cycles (peak "
        f"{ev['peak_mb']} MiB, last {ev['last_mb']} MiB, warm-up median {ev['warmup_median_mb']} MiB).",
        **ev,
    )
