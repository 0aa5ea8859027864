"""The soak benchmark's summary (growth after the warm-up, final states, answers), its
table and its plot (matplotlib, PNG); see benchmarks/soak.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def growth(series: list[float], warmup_index: int) -> float | None:
    """Relative growth from the sample at the end of the warm-up to the last sample."""
    if len(series) <= warmup_index + 1 or not series[warmup_index]:
        return None
    return (series[-1] - series[warmup_index]) / series[warmup_index]


def summarise(soak, args) -> dict:
    samples = soak.samples
    warm = min(range(len(samples)), key=lambda i: abs(samples[i]["t_s"] - min(
        300, args.duration / 4)))
    names = sorted({n for s in samples for n in s["processes"]})
    grow = {}
    for name in names:
        for figure in ("rss_bytes", "fds", "threads"):
            grow[f"{name} {figure}"] = growth(
                [s["processes"].get(name, {}).get(figure, 0) for s in samples], warm)
    grow["data_dir_bytes"] = growth([s["data_dir_bytes"] for s in samples], warm)
    if args.mode == "distributed":
        grow["redis_used_memory"] = growth([s.get("redis_used_memory") or 0
                                            for s in samples], warm)
    states = Counter(info["state"] for info in soak.jobs.values())
    codes = {f"{e} {s}": n for (e, s), n in sorted(soak.all_codes.items(), key=str)}
    return {"mode": args.mode if not args.url else "url", "duration_s": args.duration,
            "retention_s": args.retention, "requests": soak.requests,
            "accepted_jobs": len(soak.jobs), "final_states": dict(states),
            "lost_jobs": states.get("lost", 0), "unreadable_results": soak.unreadable,
            "http_500s": sum(n for k, n in codes.items() if k.endswith(" 500")),
            "codes": codes,
            "faults": [e for e in soak.dep.events if "fault" in e],
            "unplanned_exits": [e for e in soak.dep.events if "unplanned_exit" in e],
            "growth_after_warmup": grow, "warmup_sample_t_s": samples[warm]["t_s"],
            "samples": samples}


def table(result: dict) -> str:
    lines = [f"soak ({result['mode']}, {result['duration_s']} s, retention "
             f"{result['retention_s']} s): {result['requests']} requests, "
             f"{result['accepted_jobs']} jobs accepted, {result['lost_jobs']} lost, "
             f"{len(result['unreadable_results'])} unreadable results, "
             f"{result['http_500s']} HTTP 500s",
             f"faults: {result['faults'] or 'none'}",
             f"unplanned exits (restarted): {result['unplanned_exits'] or 'none'}", "",
             f"{'t (s)':>7} {'RSS MiB':>9} {'fds':>5} {'thr':>5} {'data MiB':>9} "
             f"{'redis MiB':>9} {'score1 p50':>10} {'p99':>7}"]
    for s in result["samples"]:
        procs = s["processes"].values()
        score = s["latency"].get("score1", {})
        redis_mib = (s.get("redis_used_memory") or 0) / 2 ** 20
        lines.append(f"{s['t_s']:>7.0f} {sum(p['rss_bytes'] for p in procs) / 2**20:>9.0f} "
                     f"{sum(p['fds'] for p in procs):>5} "
                     f"{sum(p['threads'] for p in procs):>5} "
                     f"{s['data_dir_bytes'] / 2**20:>9.2f} {redis_mib:>9.2f} "
                     f"{score.get('p50_s', float('nan')):>10.3f} "
                     f"{score.get('p99_s', float('nan')):>7.3f}")
    lines += ["", f"growth after the sample at {result['warmup_sample_t_s']} s:"]
    lines += [f"  {k}: {'n/a' if v is None else f'{v:+.1%}'}"
              for k, v in result["growth_after_warmup"].items()]
    lines += ["", "answers: " + ", ".join(f"{k}: {n}" for k, n in result["codes"].items())]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    names = sorted({n for s in samples for n in s["processes"]})
    for ax, figure, label in zip(axes[0], ("rss_bytes", "fds", "threads"),
                                 ("RSS (MiB)", "open descriptors", "threads")):
        for name in names:
            scale = 2 ** 20 if figure == "rss_bytes" else 1
            ax.plot(t, [s["processes"].get(name, {}).get(figure, 0) / scale
                        for s in samples], label=name)
        ax.set_title(label)
    axes[0][0].legend(fontsize=7)
    axes[1][0].plot(t, [s["data_dir_bytes"] / 2 ** 20 for s in samples], label="data dir")
    if result["mode"] == "distributed":
        axes[1][0].plot(t, [(s.get("redis_used_memory") or 0) / 2 ** 20 for s in samples],
                        label="Redis used_memory")
    axes[1][0].set_title("storage (MiB)")
    axes[1][0].legend(fontsize=7)
    for q in ("p50_s", "p99_s"):
        axes[1][1].plot(t, [s["latency"].get("score1", {}).get(q) for s in samples], label=q)
    axes[1][1].set_title("one-image /ood-score (s)")
    axes[1][1].legend(fontsize=7)
    errors = [sum(n for k, n in s["codes"].items() if not k.endswith((" 200", " 202")))
              for s in samples]
    axes[1][2].bar(t, errors, width=0.1)
    axes[1][2].set_title("non-2xx answers per sample")
    for ax in axes.flat:
        ax.set_xlabel("minutes")
        for fault in result["faults"]:
            ax.axvline(fault["at_s"] / 60, color="grey", linestyle=":")
    fig.suptitle(f"soak, {result['mode']} mode ({result['command']})", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
