"""`make bench`: every benchmark, then one markdown table of the figures for the README.

Writes benchmarks/results/*.json and benchmarks/results/table.md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCRIPTS = [["throughput.py"], ["overhead.py"], ["operations.py"], ["backlog.py"], ["big_file.py"],
           ["operator_commands.py"], ["evaluation.py", "tiny", "1000"], ["evaluation.py", "smollm2", "64", "2"],
           ["forgetting.py", "--seeds", "10", "--equal-steps", "--json", str(RESULTS / "forgetting.json")]]
README = HERE.parent / "README.md"
FORGETTING_TABLE = ("<!-- forgetting-table -->", "<!-- /forgetting-table -->")  # make bench rewrites it


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def table() -> str:
    tiny, smol = _load("throughput_tiny"), _load("throughput_smollm2")
    ops, big, over = _load("operations"), _load("big_file"), _load("overhead")
    backlog, commands = _load("backlog"), _load("operator_commands")
    rows = []

    def row(figure: str, target: str, value: str, met: bool | None) -> None:
        rows.append(f"| {figure} | {target} | {value} | {'met' if met else 'missed' if met is not None else ''} |")

    for name, t in (("tiny", tiny), ("SmolLM2-135M", smol)):
        if not t:
            continue
        row(f"{name}: daemon speed / hand PyTorch+PEFT loop (identical batches)", "≥ 0.95×",
            f"{t['daemon_over_hand_speed']}× ({t['daemon_overhead_ms_per_step']} ms/step overhead)",
            t["daemon_over_hand_speed"] >= 0.95)
        row(f"{name}: daemon speed / HF Trainer + PEFT, unpacked", "≥ 1.0×", f"{t['daemon_over_hf_trainer_speed']}×",
            t["daemon_over_hf_trainer_speed"] >= 1.0)
        row(f"{name}: packing gain in non-pad tokens/s (padding {t['padding_fraction']:.1%}, ideal "
            f"{t['packing_ideal_gain']}×)", "≥ 0.9 × ideal",
            f"{t['packing_gain']}× = {t['packing_gain_over_ideal']} × ideal", t["packing_gain_over_ideal"] >= 0.9)
        row(f"{name}: non-pad tokens/s unpacked → packed", "", f"{t['daemon_nonpad_tokens_per_s']} → "
            f"{t['packed_nonpad_tokens_per_s']}", None)
        spread = ", ".join(f"{k} {statistics.median(v):g} ({min(v):g}–{max(v):g})"
                           for k, v in t["ms_per_step_rounds"].items())
        row(f"{name}: ms per step, median (min–max) of {len(t['ms_per_step_rounds']['daemon'])} alternating rounds",
            "", spread, None)
    if ops:
        row("file switch (last step of file k → first step of k+1) vs end-of-file checkpoint write", "≤ write + 0.5 s",
            f"{ops['file_switch_s']} s vs {ops['end_of_file_checkpoint_write_s']} s",
            ops["file_switch_minus_write_s"] <= 0.5)
        row("arrival latency: small file lands → first step (settle 2 s)", "≤ settle + 1 s",
            f"{ops['arrival_latency_s_settle_2']} s (settle 0.2 s: {ops['arrival_latency_s_settle_0.2']} s)",
            ops["arrival_latency_s_settle_2"] <= 3.0)
        for model in ("tiny", "smollm2"):
            if f"{model}_checkpoint_bytes" in ops:
                row(f"{model}: checkpoint bytes vs trainable params × 12", "≤ 1.1× + 1 MB",
                    f"{ops[f'{model}_checkpoint_bytes']:,} B = {ops[f'{model}_checkpoint_over_params_x12']}×; "
                    f"save {ops[f'{model}_checkpoint_save_ms']:.0f} ms, "
                    f"load {ops[f'{model}_checkpoint_load_ms']:.0f} ms; "
                    f"{ops[f'{model}_checkpoint_over_adapter']}× the adapter file",
                    ops[f"{model}_within_1.1x_plus_1MB"])
        row("`.stop` mid-file → process exit, checkpoint included", "≤ 10 s", f"{ops['stop_to_exit_s']} s",
            ops["stop_to_exit_s"] <= 10)
        row("idle cost (empty inbox)", "< 1.2 CPU s/min", f"{ops['idle_cpu_s_per_minute']} CPU s/min",
            ops["idle_cpu_s_per_minute"] < 1.2)
        row("memory: RSS after 30 small files vs after 3", "within 5 %",
            f"{ops['rss_mb_after_3_files']} → {ops['rss_mb_after_30_files']} MB ({ops['rss_growth_3_to_30']:+.1%})",
            abs(ops["rss_growth_3_to_30"]) <= 0.05)
    if "large_over_small_rate" in backlog:
        small, large = backlog["backlog_sizes"][0], backlog["backlog_sizes"][-1]
        capped = " (window capped)" if backlog[f"n{large}_window_capped"] else ""
        row(f"backlog: files/minute with {large:,} one-step files waiting vs {small:,} waiting "
            f"({backlog[f'n{large}_files_measured']} files each)", "≥ 0.8×",
            f"{backlog[f'n{large}_files_per_minute']} vs {backlog[f'n{small}_files_per_minute']} = "
            f"{backlog['large_over_small_rate']}× ({backlog[f'n{large}_seconds_per_file']} s vs "
            f"{backlog[f'n{small}_seconds_per_file']} s per file; stop with {large:,} waiting "
            f"{backlog[f'n{large}_stop_s']} s){capped}",
            backlog["large_over_small_rate"] >= 0.8)
    for model, o in over.items():
        row(f"{model}: daemon's own cost per step (everything but forward, backward, clipping, optimizer), "
            "in one process", "", f"{o['overhead_ms_per_step']} ms of {o['ms_per_step']} ms "
            f"({o['overhead_share_of_step']:.2%})", None)
        row(f"{model}: logging cost (loss history, TensorBoard, status) / fit time, default settings", "≤ 3 %",
            f"{o['logging_share_of_fit']:.2%}", o["logging_share_of_fit"] <= 0.03)
        row(f"{model}: batch building (read + tokenize + collate) / fit time, in the training process", "",
            f"{o['batch_building_share_of_fit']:.2%}", None)
    if big:
        row(f"{big['big_file_mb'] / 1000:.0f} GB JSONL ({big['big_examples']:,} lines of {big['line_bytes']} B): "
            "peak RSS growth vs a small file, 200 steps each", "< 300 MB",
            f"+{big['peak_rss_growth_mb']} MB ({big['peak_rss_mb_small_file']} → {big['peak_rss_mb_big_file']} MB)",
            big["peak_rss_growth_mb"] < 300)
        row("index pass (sha256, offsets, CRC-32, validation) / index size", "≤ 16 B per example",
            f"{big['index_s']} s ({big['index_mb_per_s']} MB/s); {big['index_bytes_per_example']} B per example "
            "(16 with packing)",
            big["index_bytes_per_example"] <= 16)
    if "stop_during_index_s" in big:
        finished = big["stop_during_index_pass_finished"]
        row("`.stop` during the index pass of that file → process exit", "≤ 10 s, exit 0, pass cancelled",
            f"{big['stop_during_index_s']} s, exit {big['stop_during_index_exit_code']}, "
            f"{'pass ran to its end' if finished else 'pass cancelled'}",
            big["stop_during_index_s"] <= 10 and big["stop_during_index_exit_code"] == 0 and not finished)
    if commands:
        sizes = "; ".join(f"{r['checkpoint_mib']:g} MiB: {r['link_s'] * 1000:.0f} vs {r['copy_s'] * 1000:.0f} ms "
                          f"({r['copy_over_link']}×)" for r in commands["snapshot_sizes"])
        row("snapshot (`snapshots.take`, fsync included) by checkpoint size: hard links vs copies", "", sizes, None)
        row("training's wait for a requested snapshot (step gap − the step times before it)",
            "the checkpoint + the snapshot",
            f"{commands['snapshot_training_wait_s'] * 1000:.0f} ms (checkpoint write "
            f"{commands['snapshot_wait_checkpoint_write_s'] * 1000:.0f} ms, snapshot "
            f"{commands['snapshot_wait_take_s'] * 1000:.0f} ms; median step {commands['median_step_s'] * 1000:.0f} ms)",
            None)
        row("`lit-continual pause` → status `paused`, while training", "acknowledged ≤ 2 s",
            f"{commands['pause_to_paused_s']} s median, {commands['pause_to_paused_max_s']} s max "
            f"(`.pause` seen → paused {commands['pause_seen_to_paused_s']} s)",
            commands["pause_to_paused_max_s"] <= 2)
        row("tiny: consolidation (child process) and max abs logit difference from the PeftModel", "≤ 1e-4",
            f"{commands['consolidate_s']} s; {commands['consolidated_max_abs_logit_diff']:.1e}",
            commands["consolidated_max_abs_logit_diff"] <= 1e-4)
    for model in ("tiny", "smollm2"):
        e = _load(f"evaluation_{model}")
        if e:
            low, high = e["eval_over_train_range"]
            row(f"{model}: one evaluation of a {e['eval_lines']}-line eval set / training a "
                f"{e['file_lines']}-line file (eval defaults: once per file)", "",
                f"{e['eval_over_train_median']:.0%} ({low:.0%}–{high:.0%} over "
                f"{e['rounds']} rounds); samples (2 prompts × 64 tokens) {e['samples_s_median']:.1f} s", None)
    forgetting = _load("forgetting")
    if forgetting:
        def mean(key: str, fraction: float, b_lines: int = 240) -> float:
            return statistics.fmean(r[key] for r in forgetting["runs"]
                                    if r["fraction"] == fraction and r.get("b_lines", 240) == b_lines)

        without, replayed = mean("forgetting", 0.0), mean("forgetting", 0.25)
        row(f"forgetting of domain A after domain B, {forgetting['seeds']} seeds: without replay; with "
            "data.replay_fraction=0.25 (× without)", "≥ 1.03 nats; ≤ 0.35×",
            f"{without:.2f} nats; {replayed:.2f} nats ({replayed / without:.2f}×)",
            without >= 1.03 and replayed <= 0.35 * without)
        if any(r.get("b_lines", 240) == 180 for r in forgetting["runs"]):
            equal = mean("forgetting", 0.25, 180)
            cost = mean("b_after_b", 0.25, 180) - mean("b_after_b", 0.0)
            row("the same at equal steps (B cut to 180 lines with replay 0.25): forgetting (× without); "
                "cost on B's loss", "≤ 0.35×; < 0.15 nats", f"{equal:.2f} nats ({equal / without:.2f}×); "
                f"{cost:+.3f} nats", equal <= 0.35 * without and cost < 0.15)
    head = "| figure | target | measured | |\n|---|---|---|---|"
    return head + "\n" + "\n".join(rows) + "\n"


def main() -> None:
    for script in SCRIPTS:
        subprocess.run([sys.executable, str(HERE / script[0]), *script[1:]], check=True)
    text = table()
    (RESULTS / "table.md").write_text(text)
    print(text)
    readme_forgetting_table()


def readme_forgetting_table() -> None:
    """The README's forgetting table, from benchmarks/results/forgetting.json."""
    found = _load("forgetting")
    readme = README.read_text()
    start, end = FORGETTING_TABLE
    if not found or start not in readme or end not in readme:
        return
    sys.path.insert(0, str(HERE))
    from forgetting import table as forgetting_table

    before, rest = readme.split(start, 1)
    README.write_text(f"{before}{start}\n{forgetting_table(found['runs'])}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    main()
