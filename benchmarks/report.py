"""Writes and reads a run's results: results.json (meta + records), results.csv, report.md, command.txt, and the
PNG plots (benchmarks/plots.py; skipped with a notice when matplotlib is missing)."""
import csv
import json
from pathlib import Path

from .records import FIELD_TYPES, FIELDS, MODES, TRAIN_MODE, VARIANTS

MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwdbwd": "forward+backward", TRAIN_MODE: "training step"}


# ---------------------------------------------------------------- JSON and CSV


def write_json(path, meta, records):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"meta": meta, "records": records}, fh, indent=1, default=str)
        fh.write("\n")


def read_json(path):
    """(meta, records) from results.json."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return data["meta"], data["records"]


def write_csv(path, records):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({name: _to_cell(record.get(name), FIELD_TYPES[name]) for name in FIELDS})


def read_csv(path):
    """Records from results.csv, with their types restored (empty cells become None)."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [{name: _from_cell(row.get(name, ""), FIELD_TYPES[name]) for name in FIELDS} for row in csv.DictReader(fh)]


def _to_cell(value, kind):
    if value is None:
        return ""
    if kind == "shape":
        return "x".join(str(d) for d in value)
    if kind == "bool":
        return "true" if value else "false"
    if kind == "float":
        return repr(float(value))  # repr round-trips exactly
    return str(value)


def _from_cell(cell, kind):
    if cell == "":
        return None
    if kind == "shape":
        return [int(d) for d in cell.split("x")]
    if kind == "bool":
        return cell == "true"
    if kind == "float":
        return float(cell)
    if kind == "int":
        return int(cell)
    return cell


# ---------------------------------------------------------------- markdown


def fmt_ms(value):
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 100 else f"{value:.3f}" if value >= 1 else f"{value:.4f}"


def fmt_ratio(value):
    return "—" if value is None else f"{value:.2f}×"


def fmt_pct(value):
    return "—" if value is None else f"{100 * value:.0f}%"


def fmt_num(value, digits=0):
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_gib(mib):
    return "—" if mib is None else f"{mib / 1024:.2f}"


def fmt_rate(value):
    return "—" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def group_by_case_mode(records):
    """{(case, mode): {variant: record}}, in first-seen case order and MODES order."""
    groups = {}
    for r in records:
        groups.setdefault((r["case"], r["mode"]), {})[r["variant"]] = r
    order = {m: i for i, m in enumerate(MODES + (TRAIN_MODE,))}
    cases = list(dict.fromkeys(r["case"] for r in records))
    return dict(sorted(groups.items(), key=lambda kv: (cases.index(kv[0][0]), order.get(kv[0][1], len(order)))))


def ratio_table(records, spread=True):
    """The markdown table of fusegan against eager and torch.compile: one row per (case, mode)."""
    header = ["case", "mode", "fusegan ms", "eager ms", "compile ms", "× eager", "× compile", "fusegan GB/s", "% copy BW",
              "peak MiB f/e/c", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 8 + ["---"]) + "|"]
    for (case, mode), by_variant in group_by_case_mode(records).items():
        fused = by_variant.get("fusegan", {})
        times = [_time_cell(by_variant.get(v), spread) for v in VARIANTS]
        row = [case, mode, *times, fmt_ratio(fused.get("speedup_vs_eager")), fmt_ratio(fused.get("speedup_vs_compile")),
               fmt_num(fused.get("gbps")), fmt_pct(fused.get("frac_copy_bw")),
               _per_variant(by_variant, "peak_mem_mib", fmt_num), _notes(by_variant)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def train_table(records, spread=True):
    """The markdown table of the training steps: one row per model, the three variants side by side."""
    header = ["case", "images", "fusegan ms/step", "eager ms/step", "compile ms/step", "img/s f/e/c", "fusegan sec/kimg",
              "× eager", "× compile", "MFU f/e/c", "peak GiB f/e/c", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 9 + ["---"]) + "|"]
    for (case, _), by_variant in group_by_case_mode(records).items():
        fused = by_variant.get("fusegan", {})
        any_record = next(iter(by_variant.values()))
        shape = any_record.get("shape") or []
        images = f"{shape[0]} × {shape[2]}²" if len(shape) == 4 else "—"
        times = [_time_cell(by_variant.get(v), spread) for v in VARIANTS]
        row = [case, images, *times, _per_variant(by_variant, "img_per_s", fmt_rate), fmt_num(fused.get("sec_per_kimg"), 2),
               fmt_ratio(fused.get("speedup_vs_eager")), fmt_ratio(fused.get("speedup_vs_compile")),
               _per_variant(by_variant, "frac_matmul_peak", fmt_pct), _per_variant(by_variant, "peak_mem_mib", fmt_gib),
               _notes(by_variant)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _per_variant(by_variant, field, fmt):
    """'a / b / c': `field` of fusegan, eager and compile ('—' where missing)."""
    return " / ".join(fmt((by_variant.get(v) or {}).get(field)) for v in VARIANTS)


def _time_cell(record, spread):
    if not record:
        return "—"
    if record.get("error"):
        return "error"
    cell = fmt_ms(record.get("p50"))
    return f"{cell} ({fmt_ms(record['p20'])}–{fmt_ms(record['p80'])})" if spread else cell


def _notes(by_variant):
    notes = []
    for variant in VARIANTS:
        r = by_variant.get(variant)
        if r and r.get("check") == "MISMATCH":
            notes.append(f"{variant} MISMATCH vs eager")
        elif r and r.get("check") not in (None, "ok"):
            notes.append(f"{variant} {r['check']}")
        if r and r.get("error"):
            notes.append(f"{variant} failed")
    if any(r.get("throttled") for r in by_variant.values()):
        notes.append("THROTTLED")
    return "; ".join(notes)


def target_rows(meta, records):
    """[(case, mode, what, target, measured, met)] for every target a case states."""
    fields = {"vs_eager": "speedup_vs_eager", "vs_compile": "speedup_vs_compile", "frac_copy_bw": "frac_copy_bw",
              "frac_matmul_peak": "frac_matmul_peak"}
    groups = group_by_case_mode(records)
    rows = []
    for case, info in meta.get("cases", {}).items():
        for mode, targets in info.get("targets", {}).items():
            fused = groups.get((case, mode), {}).get("fusegan", {})
            for what, target in targets.items():
                measured = fused.get(fields[what])
                rows.append((case, mode, what, target, measured, None if measured is None else measured >= target))
    return rows


def markdown_report(meta, records):
    """The full report: run header, peaks, one ratio table per suite, targets, bytes models, errors."""
    out = ["# fusegan benchmarks", "", *run_header(meta), ""]
    for suite in dict.fromkeys(r["suite"] for r in records):
        suite_records = [r for r in records if r["suite"] == suite]
        if suite == "train":
            out += ["## train", "", "Whole training steps (G step, D step, lazy regularization amortized as in training) "
                    "on synthetic data (random tensors on the device, no data loading), bf16 mixed precision. Times "
                    "are ms per training step, p50 (p20–p80); img/s and sec/kimg at p50 (sec/kimg is comparable to "
                    "StyleGAN2-ADA's tables); × is fusegan's speedup; MFU = model FLOPs per step (FlopCounterMode on "
                    "the eager reference, one amortization cycle) / time / measured bf16 matmul peak; peak = "
                    "torch.cuda.max_memory_allocated during the timed steps. f/e/c = fusegan / eager / compile.", "",
                    train_table(suite_records), ""]
            amortization = {case: info.get("amortization") for case, info in meta.get("cases", {}).items()
                            if info.get("suite") == "train" and info.get("amortization")}
            out += [f"- `{case}`: {text}" for case, text in amortization.items()] + [""]
            continue
        out += [f"## {suite}", "", "Times are p50 (p20–p80) in ms; × is fusegan's speedup at p50 (> 1 is faster); "
                "GB/s and % of copy bandwidth come from each case's bytes model below; peak MiB = "
                "torch.cuda.max_memory_allocated during the repetitions (f/e/c = fusegan / eager / compile).", "",
                ratio_table(suite_records), ""]
    rows = target_rows(meta, records)
    if rows:
        out += ["## targets", "", "| case | mode | metric | target | measured | met |", "|---|---|---|---:|---:|---|"]
        for case, mode, what, target, measured, met in rows:
            shown = fmt_pct(measured) if what.startswith("frac") else fmt_ratio(measured)
            wanted = fmt_pct(target) if what.startswith("frac") else fmt_ratio(target)
            verdict = "—" if met is None else "yes" if met else f"NO (by {_shortfall(what, target, measured)})"
            out.append(f"| {case} | {mode} | {what} | {wanted} | {shown} | {verdict} |")
        out.append("")
    models = {case: info.get("bytes_model") for case, info in meta.get("cases", {}).items() if info.get("bytes_model")}
    if models:
        out += ["## bytes models", ""] + [f"- `{case}`: {model}" for case, model in models.items()] + [""]
    errors = sorted({(r["case"], r["variant"], r["error"]) for r in records if r.get("error")})
    if errors:
        out += ["## errors", ""] + [f"- `{case}` {variant}: {error}" for case, variant, error in errors] + [""]
    if meta.get("skipped"):
        out += ["## not run (time limit)", ""] + [f"- `{case}`" for case in meta["skipped"]] + [""]
    plots = meta.get("plots") or []
    if plots:
        out += ["## plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


def _shortfall(what, target, measured):
    if what.startswith("frac"):
        return f"{100 * (target - measured):.0f} points"
    return f"{100 * (1 - measured / target):.0f}%"


def run_header(meta):
    """Bullet lines naming the GPU, date, versions, command, peaks and telemetry of a run."""
    lines = [
        f"- GPU: **{meta.get('gpu')}**, {meta.get('date')}, timer: {meta.get('timer')}",
        f"- torch {meta.get('torch')}, triton {meta.get('triton')}, CUDA {meta.get('cuda')}, "
        f"fusegan {meta.get('fusegan')} (commit {meta.get('git_commit')})",
        f"- command: `{meta.get('command')}`",
    ]
    peaks = meta.get("peaks") or {}
    if peaks:
        copy, mm, tf32 = peaks.get("copy", {}), peaks.get("matmul", {}), peaks.get("matmul_tf32")
        lines.append(f"- measured peaks: copy {fmt_num(copy.get('value'))} GB/s ({copy.get('what')}); "
                     f"matmul {fmt_num(mm.get('value'), 1)} TFLOP/s ({mm.get('what')})"
                     + (f"; {fmt_num(tf32.get('value'), 1)} TFLOP/s ({tf32.get('what')}, the peak of fp32 cases "
                        "whose convs run in TF32)" if tf32 else ""))
    lines.append(f"- L2 flushed before each repetition: {'yes' if meta.get('l2_flush') else 'no'}; "
                 f"cudnn.benchmark: {meta.get('cudnn_benchmark')}; fused impl: {meta.get('fused_impl')}; "
                 f"compile backend: {meta.get('compile_backend')}")
    if meta.get("telemetry_note"):
        lines.append(f"- {meta['telemetry_note']}")
    if meta.get("elapsed_s") is not None:
        slowest = sorted(((info.get("seconds") or 0, case) for case, info in (meta.get("cases") or {}).items()), reverse=True)
        listed = ", ".join(f"{case} {seconds:.0f} s" for seconds, case in slowest[:3])
        lines.append(f"- wall time of the cases: {meta['elapsed_s']:.0f} s" + (f" (slowest: {listed})" if listed else ""))
    if meta.get("smoke"):
        lines.append("- CPU SMOKE RUN: tiny shapes, reference path, wall clock; the numbers mean nothing.")
    return lines


def write_results(out_dir, meta, records, plots=True, log=print):
    """Writes results.json, results.csv, report.md and command.txt into `out_dir`, and with `plots` the PNGs
    (their names go into meta['plots'] and the report); returns the paths written."""
    from .plots import write_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("results.json", "results.csv", "report.md", "command.txt")}
    write_json(paths["results.json"], meta, records)  # first: the raw numbers survive any later failure
    write_csv(paths["results.csv"], records)
    if plots:
        pngs = write_plots(out_dir, records, meta=meta, log=log)
        meta = {**meta, "plots": [p.name for p in pngs]}
        paths.update({p.name: p for p in pngs})
        write_json(paths["results.json"], meta, records)
    paths["report.md"].write_text(markdown_report(meta, records) + "\n", encoding="utf-8")
    paths["command.txt"].write_text(f"{meta.get('command')}\n", encoding="utf-8")
    return paths


def parse_markdown_tables(text):
    """Every markdown table in `text`, as lists of {header: cell} rows (for tests and tooling)."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            header, body = block[0], block[2:]  # block[1] is the |---| separator
            tables.append([dict(zip(header, row)) for row in body])
            block = []
    return tables


def main(argv=None):
    """`python -m benchmarks.report DIR`: rewrites DIR's results.csv, report.md, command.txt and plots from its
    results.json (e.g. on a CPU machine after a GPU run that brought back only results.json)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__.splitlines()[0])
    parser.add_argument("dir", help="a folder holding results.json")
    args = parser.parse_args(argv)
    meta, records = read_json(Path(args.dir) / "results.json")
    paths = write_results(args.dir, meta, records)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
