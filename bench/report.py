"""Turns bench/results/latest.json into docs/performance.md and its plots (matplotlib, Agg).

`python -m bench.report [results.json [DIR]]` rewrites the report (into docs/, or DIR) from a saved run.
The hand-written part (what was profiled, where the remaining time goes) lives in bench/analysis.md
and is included as it is.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.harness import ENDPOINTS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ANALYSIS = ROOT / "bench" / "analysis.md"
THROUGHPUT_PNG = "performance-throughput.png"
LATENCY_PNG = "performance-latency.png"

LABELS = ENDPOINTS  # kind -> label, as bench/run.py measured them
GUIDE = {
    "throughput": ("8k req/s", "18k req/s"),
    "p99": ("45 ms", "12 ms"),
    "cold": ("3.2 s", "1.1 s"),
    "memory": ("120 MB", "65 MB"),
}


def _mmm(stat: dict[str, float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}-{fmt.format(stat['max'])})"


def _pct(value: float) -> str:
    return f"{value:.0%}"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def targets(results: dict[str, Any], db: str = "postgresql") -> list[tuple[str, str, str, bool | None]]:
    """Issue 5's targets: (metric, target, measured, met)."""
    rows: list[tuple[str, str, str, bool | None]] = []
    svc = results["service"].get(db)
    ceiling = results["fastapi"]["rps"]["median"]
    if svc is None:
        return model_targets(results)
    eps = svc["endpoints"]
    for kind, share in (("get_item", 0.40), ("list", 0.25), ("post", 0.25)):
        if kind in eps:
            got = eps[kind]["rps"]["median"] / ceiling
            rows.append(
                (
                    f"authenticated {LABELS[kind]}: share of the bare-FastAPI ceiling",
                    f">= {share:.0%}",
                    f"{_pct(got)} ({eps[kind]['rps']['median']:,.0f} / {ceiling:,.0f} req/s)",
                    got >= share,
                )
            )
    ol = svc["openloop"]
    p99 = ol["latency"]["p99_ms"]
    rows.append(
        (
            f"p99 at half the measured throughput (GET item, {ol['rate']:,.0f} req/s offered)",
            "<= 12 ms",
            f"{p99:.1f} ms (p50 {ol['latency']['p50_ms']:.1f}, max {ol['latency']['max_ms']:.1f})",
            p99 <= 12,
        )
    )
    worst = max(
        ((k, e["p99_ms"]["median"] / e["p50_ms"]["median"]) for k, e in eps.items() if e["p50_ms"]["median"]),
        key=lambda pair: pair[1],
    )
    gi = eps["get_item"]
    ratio = gi["p99_ms"]["median"] / gi["p50_ms"]["median"]
    rows.append(
        (
            "p99 / p50 at saturation (64 connections), GET item",
            "<= 4x",
            f"{ratio:.1f}x ({gi['p99_ms']['median']:.1f} / {gi['p50_ms']['median']:.1f} ms); "
            f"worst endpoint {worst[0]} {worst[1]:.1f}x",
            ratio <= 4 and worst[1] <= 4,
        )
    )
    if "cold_start_s" in svc:
        cold = svc["cold_start_s"]["median"]
        rows.append(("cold start to ready (median)", "<= 1.1 s", f"{cold:.2f} s", cold <= 1.1))
    rss = svc["memory"]["web_worker_rss_mb"]
    rows.append(("resident memory of the web worker after load", "<= 65 MB", f"{rss:.0f} MB", rss <= 65))
    wide = svc["wide"]
    c64, c1024 = wide["c64"], wide["c1024"]
    ok64 = c64["rps"] * (1 - c64["non_2xx"] / max(c64.get("requests", 1), 1))
    ok1024 = c1024["rps"] * (1 - c1024["non_2xx"] / max(c1024.get("requests", 1), 1))
    share = ok1024 / ok64 if ok64 else 0.0
    statuses = c1024.get("status_counts", {})
    probe = wide.get("c1024_probe", {})
    not_503 = [s for s in statuses if not s.startswith("2") and s != "503"]
    shed = probe.get("latency_by_status", {}).get("503")
    shed_text = f"; 503s answered in p99 {shed['p99_ms']:.1f} ms" if shed else ""
    rows.append(
        (
            "successful throughput at 1,024 connections vs 64; every non-2xx a fast 503",
            ">= 80%",
            f"{_pct(share)} ({ok1024:,.0f} vs {ok64:,.0f} 2xx/s); statuses {statuses}{shed_text}",
            share >= 0.8 and not not_503 and c1024["socket_errors"] == 0,
        )
    )
    return rows + model_targets(results)


def model_targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """The model-serving rows (bench/bench_serving.py, measured on the embedded database), the
    two tiers' (bench/bench_tier.py) and the swap's (bench/bench_swap.py)."""
    models = results.get("models") or {}
    rows = [(r["metric"], r["target"], r["measured"], r.get("met")) for r in models.get("targets", [])]
    tier = results.get("tier") or {}
    swap = results.get("swap") or {}
    jobs = results.get("jobs") or {}
    quality = results.get("quality") or {}
    shadow = results.get("shadow") or {}
    rows += [
        (r["metric"], r["target"], f"{r['value']} ({r['figures']})", r["met"])
        for r in (
            *tier.get("targets", []),
            *swap.get("targets", []),
            *jobs.get("targets", []),
            *quality.get("targets", []),
            *shadow.get("targets", []),
        )
    ]
    if not rows:
        rows.append(
            ("light endpoint p99 while heavy predictions run", "<= 2x idle p99", "not in this run", None)
        )
        rows.append(
            ("predictions per second at concurrency 64, batching on vs off", ">= 4x", "not in this run", None)
        )
    return rows


def guide_table(results: dict[str, Any], db: str = "postgresql") -> list[str]:
    svc = results["service"].get(db) or next(iter(results["service"].values()))
    bare = results["fastapi"]
    gi = svc["endpoints"]["get_item"]
    ol, bare_ol = svc["openloop"], bare.get("openloop")
    lines = [
        "| Metric | guide typical | guide optimized | this service | ceiling (bare FastAPI) | ratio |",
        "|---|---|---|---|---|---|",
        f"| Throughput (JSON CRUD: authenticated GET item, {svc['database']}) | {GUIDE['throughput'][0]} "
        f"| {GUIDE['throughput'][1]} | {gi['rps']['median']:,.0f} req/s | {bare['rps']['median']:,.0f} req/s "
        f"| {_pct(gi['rps']['median'] / bare['rps']['median'])} |",
    ]
    if bare_ol:
        lines.append(
            f"| p99 latency (async DB) at half throughput | {GUIDE['p99'][0]} | {GUIDE['p99'][1]} "
            f"| {ol['latency']['p99_ms']:.1f} ms at {ol['rate']:,.0f} req/s "
            f"| {bare_ol['latency']['p99_ms']:.1f} ms at {bare_ol['rate']:,.0f} req/s "
            f"| {ol['latency']['p99_ms'] / bare_ol['latency']['p99_ms']:.1f}x |"
        )
    if "cold_start_s" in svc and "cold_start_s" in bare:
        lines.append(
            f"| Cold start (launch to ready) | {GUIDE['cold'][0]} | {GUIDE['cold'][1]} "
            f"| {svc['cold_start_s']['median']:.2f} s | {bare['cold_start_s']['median']:.2f} s "
            f"| {svc['cold_start_s']['median'] / bare['cold_start_s']['median']:.1f}x |"
        )
    rss, bare_rss = svc["memory"]["web_worker_rss_mb"], bare.get("rss_mb")
    lines.append(
        f"| Memory per worker (RSS after load) | {GUIDE['memory'][0]} | {GUIDE['memory'][1]} | {rss:.0f} MB "
        f"| {bare_rss:.0f} MB | {rss / bare_rss:.1f}x |"
    )
    return lines + container_rows(results.get("container"))


def container_rows(box: dict[str, Any] | None) -> list[str]:
    """The guide's cold start is measured in Docker: the image's rows, beside the same service run as
    a bare process in the same run (bench/bench_container.py), not beside bare FastAPI."""
    if not box or "cold_start_s" not in box:
        return []
    cold, bare = box["cold_start_s"]["median"], box["bare_cold_start_s"]["median"]
    rss, bare_rss = box["memory"]["web_worker_rss_mb"], box["bare_memory"]["web_worker_rss_mb"]
    return [
        f"| Cold start (Docker): `{box['engine'].split()[0]} run` to ready, SQLite, median of {box['runs']} "
        f"| {GUIDE['cold'][0]} | {GUIDE['cold'][1]} (slim image + precompile) | {cold:.2f} s "
        f"| {bare:.2f} s: the same service as a bare process | {cold / bare:.1f}x |",
        f"| Memory per worker in the container (RSS after light load) | {GUIDE['memory'][0]} "
        f"| {GUIDE['memory'][1]} | {rss:.0f} MB | {bare_rss:.0f} MB: the same service as a bare process "
        f"| {rss / bare_rss:.1f}x |",
    ]


def container_section(box: dict[str, Any] | None) -> list[str]:
    """The image's size, and how its rows in the guide's table were measured."""
    if not box:
        return []
    if "skipped" in box or "error" in box:
        return [
            "## The container image",
            "",
            f"Not measured in this run: {box.get('skipped') or box['error']}.",
            "",
        ]
    children = box["memory"]["children"]
    kids = ", ".join(f"{c['rss_mb']:.0f} MB" for c in children)
    bare_kids = ", ".join(f"{c['rss_mb']:.0f} MB" for c in box["bare_memory"]["children"])
    base = (
        f" on the base image `{box['base_image']}` ({box['base_image_size_mb']:.0f} MB)"
        if "base_image" in box
        else ""
    )
    runs = box["cold_starts"]
    return [
        "## The container image (bench/bench_container.py)",
        "",
        f"Image `{box['image']}`: {box['image_size_mb']:.0f} MB uncompressed as {box['engine']} reports it"
        f"{base}. Cold start: from the `run -d` command (read-only root, tmpfs on /tmp, the SQLite data "
        "volume, the port published on 127.0.0.1) until `/readyz` answers 200 through the published "
        "port; the bare process is `python -m app.cli serve` on the host with the same settings "
        "(production, one worker, the models loaded, the embedded SQLite already migrated), started "
        f"alternately with the containers, both pinned `{box['pinning']}`. Container runs "
        f"{', '.join(f'{v:.2f}' for v in runs['container'])} s; bare "
        f"{', '.join(f'{v:.2f}' for v in runs['bare'])} s. Memory after "
        "200 item reads and 200 predictions, read from the host's /proc: web worker "
        f"{box['memory']['web_worker_rss_mb']:.0f} MB in the container "
        f"({box['bare_memory']['web_worker_rss_mb']:.0f} MB bare); its children (resource tracker, "
        f"forkserver, model worker) {kids} "
        f"({bare_kids} bare); in all {box['memory']['total_rss_mb']:.0f} MB "
        f"({box['bare_memory']['total_rss_mb']:.0f} MB bare)."
        + (
            f" The engine's own share (`run` of a container with the same options running `true`): "
            f"{_mmm(box['engine_overhead_s'], '{:.2f}')} s."
            if "engine_overhead_s" in box
            else ""
        )
        + (
            f" Load average (1 min) {box['load_average']['before'][0]:.1f} before and "
            f"{box['load_average']['after'][0]:.1f} after, on {os.cpu_count()} cores: other work shared "
            "the machine, so compare the two columns of one run, not runs."
            if "load_average" in box
            else ""
        )
        + (f" Measured {box['when']} by `{box['command']}`." if "when" in box else ""),
        "",
    ]


def endpoint_table(results: dict[str, Any], db: str) -> list[str]:
    ceiling = results["fastapi"]["rps"]["median"]
    svc = results["service"][db]
    lines = [
        "| Endpoint | req/s median (min-max) | share of ceiling | p50 ms | p99 ms | max ms "
        "| server CPU µs/req | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    refs = [
        ("raw ASGI app (server ceiling)", results["asgi"]),
        ("bare FastAPI (framework ceiling)", results["fastapi"]),
    ]
    rows = [*refs, *((LABELS[k], v) for k, v in svc["endpoints"].items())]
    for label, e in rows:
        lines.append(
            f"| {label} | {_mmm(e['rps'])} | {_pct(e['rps']['median'] / ceiling)} "
            f"| {e['p50_ms']['median']:.2f} | {e['p99_ms']['median']:.2f} | {e['max_ms']['median']:.1f} "
            f"| {e['server_cpu_us']['median']:.0f} | {e['non_2xx']} |"
        )
    if svc.get("predict_absent"):
        lines.append(
            "| POST /api/v1/predict | *not measured: the route did not exist in this run* | | | | | | |"
        )
    return lines


def plots(results: dict[str, Any], docs: Path = DOCS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceiling = results["fastapi"]["rps"]["median"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    labels, medians, lows, highs, colors = [], [], [], [], []
    for name, ref, color in (
        ("raw ASGI", results["asgi"], "#999999"),
        ("bare FastAPI", results["fastapi"], "#555555"),
    ):
        labels.append(name)
        medians.append(ref["rps"]["median"])
        lows.append(ref["rps"]["median"] - ref["rps"]["min"])
        highs.append(ref["rps"]["max"] - ref["rps"]["median"])
        colors.append(color)
    palette = {"postgresql": "#336791", "sqlite": "#4c9a2a"}
    for db, svc in results["service"].items():
        for kind, e in svc["endpoints"].items():
            labels.append(f"{LABELS[kind]}\n{db}")
            medians.append(e["rps"]["median"])
            lows.append(e["rps"]["median"] - e["rps"]["min"])
            highs.append(e["rps"]["max"] - e["rps"]["median"])
            colors.append(palette.get(db, "#888888"))
    y = range(len(labels))
    ax.barh(list(y), medians, xerr=[lows, highs], color=colors, capsize=3)
    ax.axvline(
        ceiling, color="black", linestyle="--", linewidth=1, label=f"bare FastAPI ceiling {ceiling:,.0f}"
    )
    ax.axvline(
        ceiling * 0.4, color="#c0392b", linestyle=":", linewidth=1, label="40% of ceiling (GET target)"
    )
    ax.axvline(ceiling * 0.25, color="#e67e22", linestyle=":", linewidth=1, label="25% (list, POST target)")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("requests per second (wrk, 64 connections; median, min-max)")
    ax.set_title("Throughput per endpoint against the framework's ceiling (one worker, one core)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(docs / THROUGHPUT_PNG, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    curves = [("bare FastAPI", results["fastapi"].get("openloop"))]
    curves += [(f"GET item, {db}", svc["openloop"]) for db, svc in results["service"].items()]
    for name, ol in curves:
        if not ol:
            continue
        points = [(p, v) for p, v in ol["percentile_curve_ms"] if p < 100]
        xs = [1 / (1 - p / 100) for p, _ in points]
        ax.plot(xs, [v for _, v in points], marker=".", label=f"{name} at {ol['rate']:,.0f} req/s")
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    ax.set_xticks(ticks, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.axhline(12, color="#c0392b", linestyle=":", linewidth=1, label="12 ms (p99 target)")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_title("Latency distribution at a fixed rate of half the measured throughput (open loop)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(docs / LATENCY_PNG, dpi=110)
    plt.close(fig)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out = [
        "# Performance",
        "",
        "<!-- Generated by `python -m bench.report` from bench/results/latest.json; the analysis section",
        "     comes from bench/analysis.md. Edit those, not this file. -->",
        "",
        f"Measured {results['when']} by `{results['command']}` in {results['elapsed_s']:.0f} s. "
        "Re-run it to refresh this page; the raw figures are in `bench/results/latest.json`.",
        "",
        "One uvicorn worker (the production entry point `python -m app.cli serve`, `WEB_CONCURRENCY=1`, "
        "`ACCESS_LOG=false`, `LOG_LEVEL=WARNING`, `ENVIRONMENT=production`) pinned with "
        f"`{results['pinning']['server']}`; wrk and the open-loop generator pinned with "
        f"`{results['pinning']['load']}`. PostgreSQL runs on the same machine, unpinned. "
        f"Each closed-loop figure is the median (min-max) of {results['profile']['repeats']} runs of "
        f"{results['profile']['duration']} s after a 1 s warm-up; 8 users own 10,000 seeded items and every "
        "request carries a real access token of a random user.",
        "",
        "## The guide's table, measured here",
        "",
        *guide_table(results),
        "",
        "The guide's absolute numbers came from another machine; the ratio to the ceiling measured in "
        "the same run is what carries over. *Ceiling*: the same response model returned by a bare "
        "FastAPI route with no database and no auth, under the same server flags.",
        "",
        "## Targets (issue 5; one worker, PostgreSQL, ratios from one run)",
        "",
        "| Metric | Target | Measured | |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {_met(d)} |" for a, b, c, d in targets(results)),
        "",
        f"![throughput]({THROUGHPUT_PNG})",
        "",
        f"![latency]({LATENCY_PNG})",
        "",
    ]
    for db in results["service"]:
        svc = results["service"][db]
        out += [f"## Closed loop on {db} (wrk, 64 connections)", "", *endpoint_table(results, db), ""]
        ol = svc["openloop"]
        out += [
            f"Open loop on {db}, GET item at {ol['rate']:,.0f} req/s for {ol['duration_s']:.0f} s: achieved "
            f"{ol['achieved_rps']:,.0f} req/s, p50 {ol['latency']['p50_ms']:.2f} ms, p99 "
            f"{ol['latency']['p99_ms']:.2f} ms, p99.9 {ol['latency']['p999_ms']:.2f} ms, max "
            f"{ol['latency']['max_ms']:.1f} ms; statuses {ol['status_counts']}. Client lag (how late a "
            f"request left after its scheduled time; counted in its latency): p50 "
            f"{ol['client_lag']['p50_ms']:.2f} ms, p99 {ol['client_lag']['p99_ms']:.2f} ms.",
            "",
        ]
        wide = svc["wide"]
        probe = wide.get("c1024_probe", {})
        out += [
            f"1,024 connections on {db}: {wide['c1024']['rps']:,.0f} req/s, statuses "
            f"{wide['c1024'].get('status_counts')}, socket errors {wide['c1024']['socket_errors']} "
            f"(64 connections: {wide['c64']['rps']:,.0f} req/s, "
            f"statuses {wide['c64'].get('status_counts')}). "
            f"Latency by status over 1,024 connections (Python prober): "
            + ", ".join(
                f"{s}: p50 {v['p50_ms']:.1f} / p99 {v['p99_ms']:.1f} ms"
                for s, v in probe.get("latency_by_status", {}).items()
            )
            + ".",
            "",
        ]
        mem = svc["memory"]
        kids = "; ".join(f"`{c['cmd'][:60]}` {c['rss_mb']} MB" for c in mem["children"]) or "none"
        out += [
            f"Memory on {db}: web worker {mem['web_worker_rss_mb']} MB RSS after the load; children: {kids}.",
            "",
        ]
    bare = results["fastapi"]
    out += [
        "## Noise",
        "",
        "The machine is shared. Every run records the CPU used by processes that are not the server, "
        "PostgreSQL or the load generator (`foreign_cores` in latest.json); the server's CPU per request "
        "(`server_cpu_us`) is the figure least moved by such noise. Largest foreign load during any "
        "closed-loop run here: "
        + ", ".join(
            f"{name} {e['foreign_cores_max']:.2f} cores"
            for name, e in [
                ("ASGI", results["asgi"]),
                ("FastAPI", bare),
                *(
                    (f"{db} {k}", v)
                    for db, s in results["service"].items()
                    for k, v in s["endpoints"].items()
                ),
            ]
        )
        + ".",
        "",
    ]
    out += container_section(results.get("container"))
    pool = results.get("pool")
    if pool:
        out += [*pool_section(pool), ""]
    models = results.get("models")
    if models and models.get("markdown"):
        out += [
            "## Model serving (bench/bench_serving.py, bench/bench_models.py)",
            "",
            models["markdown"],
            "",
        ]
    for key, title in RUNNER_SECTIONS:
        out += _runner_section(title, key, results.get(key))
    if ANALYSIS.exists():
        out += [ANALYSIS.read_text().strip(), ""]
    out += [
        "## Machine and versions",
        "",
        f"- CPU: {m['cpu']} x {m['cpus']}; memory {m['memory']}; {m['os']}, kernel {m['kernel']}",
        f"- Python {m['python']}; {versions}",
        f"- {m['wrk']}; {m['postgresql']}",
        "",
    ]
    return "\n".join(out)


POOL_KINDS = ("get_item", "list", "post")


def pool_section(pool: dict[str, Any]) -> list[str]:
    """bench/pool_compare.py's figures: each variant of the hot paths' connection hand-out."""
    out = ["## The hot paths' connection hand-out, three ways (bench/pool_compare.py)", ""]
    if "error" in pool:
        return [*out, f"*bench/pool_compare.py failed: {pool['error']}*"]
    settings = ", ".join(f"`{k}={v}`" for k, v in pool["pool"].items())
    out += [
        "How the hot paths (item read, list, create and the token check in them) get a PostgreSQL "
        "connection: (a) the app's FIFO turnstile for `DB_POOL_SIZE` connections, a connection handed "
        "straight on to the next waiter; (b) asyncpg's own pool (min = max = `DB_POOL_SIZE`, no reset "
        "query); (c) SQLAlchemy's pool alone, a checkout and a return per request. bench/pool_variants.py "
        "swaps each in for the app's `autocommit` (the app unchanged); the server is "
        f"the production entry point with the flags above, {settings}. wrk at "
        f"{pool['connections']} connections, a 1 s warm-up then {pool['duration_s']} s per figure; a fresh "
        f"server per variant and round, the variants in turn for {pool['rounds']} round(s); median "
        "(min-max) over the rounds. *Foreign* is CPU used by no process of ours that is still alive "
        "when it is read: other tenants, and PostgreSQL backends that exited (opened and closed "
        "connections).",
        "",
        "| Variant | Endpoint | req/s | p50 ms | p99 ms | server CPU µs/req | PostgreSQL cores "
        "| foreign cores (max) | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, kinds in pool["variants"].items():
        for kind in POOL_KINDS:
            r = kinds.get(kind)
            if r is None:
                continue
            pg = sorted(run["cpu"]["postgres_cores"] for run in r["runs"])
            out.append(
                f"| {pool['labels'].get(variant, variant)} | {LABELS[kind]} | {_mmm(r['rps'])} "
                f"| {_mmm(r['p50_ms'], '{:.1f}')} | {_mmm(r['p99_ms'], '{:.1f}')} "
                f"| {_mmm(r['server_cpu_us'])} | {pg[len(pg) // 2]:.2f} | {r['foreign_cores_max']:.2f} "
                f"| {r['non_2xx'] + r['socket_errors']} |"
            )
    out += [
        "",
        f"Run in {pool['elapsed_s']:.0f} s by `{pool['command']}`; load average "
        f"{pool['load_average'][0]:.1f} before, {pool['load_average'][1]:.1f} after.",
    ]
    return out


# The sections a runner of its own fills (bench/bench_<key>.py), in the report's order.
RUNNER_SECTIONS = (
    ("tier", "Two tiers: the model server and remote-only web workers"),
    ("swap", "Predictions while a model version is swapped"),
    ("jobs", "Batch jobs"),
    ("shadow", "Shadow traffic"),
    ("quality", "Live quality over the prediction log"),
)


def _runner_section(title: str, key: str, section: dict[str, Any] | None) -> list[str]:
    """A runner's markdown under its heading (or that it failed), and when it ran if on its own."""
    if not section:
        return []
    return [
        f"## {title} (bench/bench_{key}.py)",
        "",
        section.get("markdown") or f"*bench_{key} failed: {section.get('error')}*",
        "",
        *_measured_on_its_own(section),
    ]


def _measured_on_its_own(section: dict[str, Any]) -> list[str]:
    """A runner's section measured in a sitting of its own (not by this `make bench`): when."""
    when = section.get("when")
    if not when or section.get("in_make_bench"):
        return []
    return [f"Measured {when}, by its runner alone (not in the run above).", ""]


def write_report(results: dict[str, Any], docs: Path = DOCS) -> None:
    docs.mkdir(exist_ok=True)
    plots(results, docs)
    (docs / "performance.md").write_text(render(results))
    print(f"wrote {docs / 'performance.md'} and its plots", flush=True)


if __name__ == "__main__":
    # python -m bench.report [results.json [docs dir]]
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "latest.json"
    write_report(json.loads(path.read_text()), Path(sys.argv[2]) if len(sys.argv) > 2 else DOCS)
