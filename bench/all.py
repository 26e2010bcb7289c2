"""``python -m bench all [--quick] [--pcap FILE] [--save]``: the collector, probe and export tables
in one run; markdown on stdout, JSON with the machine description, PNG charts (matplotlib, if
installed). ``--save`` writes them under bench/results/ as ``bench-<date>[-quick].{md,json}`` and
``bench-<date>[-quick]-<table>.png``; otherwise under bench/work/ as ``bench-last.*``."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import sys
import time

from bench import common

HELP = "collector, probe and export tables in one run (markdown, JSON, PNG charts)"
TABLES = ("collector", "probe", "export")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small runs, one repetition "
                                                        "(under two minutes)")
    p.add_argument("--pcap", help="also run the probe table on this capture")
    p.add_argument("--only", default=",".join(TABLES), help="tables to run (default all)")
    p.add_argument("--no-peers", action="store_true", help="probe table without the peers")
    p.add_argument("--no-charts", action="store_true")
    p.add_argument("--save", action="store_true", help="write under bench/results/")
    p.add_argument("--out", help="output stem (default bench/work/bench-last)")
    p.add_argument("--render", metavar="FILE.json", help="measure nothing: rewrite the markdown "
                                                         "and charts of a saved result")


def charts(res: dict, stem: pathlib.Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# charts skipped: matplotlib is not installed (pip install matplotlib)",
              file=sys.stderr)
        return []
    written = []

    def bar(name, labels, values, errs, xlabel, title, extra=None):
        fig, ax = plt.subplots(figsize=(9, 0.55 * len(labels) + 1.6))
        y = list(range(len(labels)))
        h = 0.4 if extra else 0.7
        ax.barh([i - (h / 2 if extra else 0) for i in y], values, height=h, xerr=errs,
                label="this machine (median, min-max)", color="#3a7dc9")
        if extra:
            ax.barh([i + h / 2 for i in y], [v or 0 for v in extra[1]], height=h,
                    label=extra[0], color="#bbbbbb")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        path = pathlib.Path(f"{stem}-{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))

    def med_err(s):
        if not s or not s.get("n"):
            return 0, (0, 0)
        return s["median"], (s["median"] - s["min"], s["max"] - s["median"])

    t = res["tables"]
    if "collector" in t:
        rows = t["collector"]["rows"]
        m = [med_err(r["egress_flows_per_s"]) for r in rows]
        bar("collector", [f"{r['format']} {r['flag']}" for r in rows], [x[0] for x in m],
            list(zip(*[x[1] for x in m])), "flows/s to the ZeroMQ subscriber",
            "Collector, one pinned core",
            ("nProbe 9.0 published (Xeon E3-1230 v3, other hardware)",
             [r["published"] for r in rows]))
    if "probe" in t:
        for p in [t["probe"]] + ([t["probe_pcap"]] if "probe_pcap" in t else []):
            rows = p["rows"]
            m = [med_err(r["pkts_per_s"]) for r in rows]
            name = "probe" if p is t["probe"] else "probe-pcap"
            bar(name, [r["label"][:60] for r in rows], [x[0] for x in m],
                list(zip(*[x[1] for x in m])), "packets/s (whole command)",
                f"Probe: {os.path.basename(p['capture']['path'])}")
    if "export" in t:
        rows = t["export"]["rows"]
        m = [med_err(r["flows_per_s"]) for r in rows]
        bar("export", [f"{r['format']} {'zlib' if r['compress'] else 'plain'}" for r in rows],
            [x[0] for x in m], list(zip(*[x[1] for x in m])), "flows/s",
            "ZeroMQ export into a subscriber")
    return written


def source_digest() -> str:
    """sha256 of the engine's sources as they are on disk (the working tree may differ from the
    commit while benchmarks run)."""
    import hashlib
    h = hashlib.sha256()
    for p in sorted((common.ROOT / "engine").rglob("*")):
        if p.suffix in (".py", ".pyx", ".pxd") and p.is_file():
            h.update(str(p.relative_to(common.ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def consistency(res: dict) -> list[str]:
    """Problems that make a table unusable: rates not positive, loss not accounted."""
    bad = []
    t = res["tables"]
    for r in t.get("collector", {}).get("rows", []):
        name = f"collector {r['format']} {r['mode']}"
        if not r["egress_flows_per_s"].get("median", 0) > 0:
            bad.append(f"{name}: rate not positive")
        if r["sent"] != r["received"] + r["kernel_drops"] + r["export_drops"] + r["unaccounted"]:
            bad.append(f"{name}: sums do not add up")
        if r["unaccounted"]:
            bad.append(f"{name}: {r['unaccounted']} records unaccounted")
    for r in t.get("export", {}).get("rows", []):
        name = f"export {r['format']} {'zlib' if r['compress'] else 'plain'}"
        if not r["flows_per_s"].get("median", 0) > 0:
            bad.append(f"{name}: rate not positive")
        if r["unaccounted"]:
            bad.append(f"{name}: {r['unaccounted']} flows unaccounted")
    for key in ("probe", "probe_pcap"):
        for r in t.get(key, {}).get("rows", []):
            if not r["pkts_per_s"].get("median", 0) > 0:
                bad.append(f"{key} {r['label']}: rate not positive")
    return bad


def render(res: dict) -> str:
    """The markdown of a result (also from a saved JSON: ``--render FILE``)."""
    from bench import export, probe, zmqcollector
    t = res["tables"]
    md = []
    if "collector" in t:
        md.append(zmqcollector.markdown(t["collector"]))
    for key in ("probe", "probe_pcap"):
        if key in t:
            md.append(probe.markdown(t[key]))
    if "export" in t:
        md.append(export.markdown(t["export"]))
    m = res["machine"]
    head = [f"## flowprobe benchmarks, {res['date']}{' (quick)' if res['quick'] else ''}", "",
            f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical "
            f"CPUs, {(m['memory_bytes'] or 0) / 2**30:.1f} GiB, kernel {m['kernel']}, Python "
            f"{m['python']}, flowprobe {m['versions'].get('flowprobe')} (git "
            f"{m.get('git_commit')}{', uncommitted changes' if m.get('git_dirty') else ''}"
            + (f", engine sources sha256 {m['engine_sources_sha256']}"
               if m.get("engine_sources_sha256") else "") + "); "
            f"load average at start {' / '.join('%.2f' % x for x in m['loadavg_at_start'])}, "
            f"at end {' / '.join('%.2f' % x for x in m['loadavg_at_end'])}. "
            f"Run took {res['elapsed_s']:.0f} s.",
            "", "Reproduce: `%s`." % (res.get("command") or "python -m bench all"
                                      + (" --quick" if res["quick"] else ""))]
    text = "\n".join(head + [""] + ["\n\n".join(md)])
    if res["problems"]:
        text += "\n\nPROBLEMS: " + "; ".join(res["problems"])
    if res.get("charts"):
        text += "\n\nCharts: " + ", ".join(f"`{c}`" for c in res["charts"])
    return text


def run(args) -> int:
    if args.render:
        src = pathlib.Path(args.render)
        res = json.loads(src.read_text())
        stem = pathlib.Path(str(src)[:-5] if str(src).endswith(".json") else src)
        if not args.no_charts:
            res["charts"] = [os.path.relpath(p, common.ROOT) for p in charts(res, stem)] \
                or res.get("charts", [])
        res["problems"] = consistency(res)
        text = render(res)
        print(text)
        common.write_json(pathlib.Path(f"{stem}.json"), res)
        pathlib.Path(f"{stem}.md").write_text(text + "\n")
        return 1 if res["problems"] else 0
    only = set(args.only.split(","))
    started = time.time()
    res = {"benchmark": "all", "date": common.today(), "quick": bool(args.quick),
           "command": "python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
           if sys.argv and sys.argv[0].endswith("__main__.py") else None,
           "machine": common.machine(), "tables": {}}
    res["machine"]["engine_sources_sha256"] = source_digest()
    v = res["machine"]["versions"]
    for name in ("pyzmq", "matplotlib", "msgpack"):
        v[name] = common._pkg_version(name)
    from bench.probe import _pmacctd
    if _pmacctd():
        v["pmacctd"] = common._version([_pmacctd(), "-V"])
    if "collector" in only:
        from bench import zmqcollector
        res["tables"]["collector"] = zmqcollector.measure(args.quick)
    if "probe" in only:
        from bench import probe
        res["tables"]["probe"] = probe.measure(args.quick, peers=not args.no_peers)
        if args.pcap:
            res["tables"]["probe_pcap"] = probe.measure(args.quick, args.pcap,
                                                        peers=not args.no_peers)
    if "export" in only:
        from bench import export
        res["tables"]["export"] = export.measure(args.quick)
    res["elapsed_s"] = time.time() - started
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    res["problems"] = consistency(res)
    if args.save:
        stem = common.RESULTS / f"bench-{res['date']}{'-quick' if args.quick else ''}"
    else:
        stem = pathlib.Path(args.out) if args.out else common.WORK / "bench-last"
    stem.parent.mkdir(parents=True, exist_ok=True)
    res["charts"] = [] if args.no_charts else [os.path.relpath(p, common.ROOT)
                                               for p in charts(res, stem)]
    text = render(res)
    print(text)
    common.write_json(pathlib.Path(f"{stem}.json"), res)
    pathlib.Path(f"{stem}.md").write_text(text + "\n")
    print(f"# wrote {stem}.md, {stem}.json", file=sys.stderr)
    return 1 if res["problems"] else 0
