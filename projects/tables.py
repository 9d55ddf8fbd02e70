"""Tables in the docs that a script computes: written by that script, from committed records.

A script that measures something (``--record NAME``) writes its result as a JSON record,
``docs/records/NAME.json``, then renders the table from that record into the Markdown file
registered for ``NAME``, between the markers ``<!-- begin: NAME -->`` and
``<!-- end: NAME -->``. Rendering reads the record only, so ``tests/test_tables.py`` re-renders
every registered table from the committed records and fails when a committed table differs:
nothing in a generated table is typed by hand. A table may also have a figure (``figure``,
``plot``), drawn from the same record whenever the table is written.

A table that was typed in from a script's output before records existed is registered with
``measured_at`` (the commit that typed it): its block is kept as it was, marked as such, until
its command is run again with ``--record``. A table registered with ``pending`` (the reason)
has no record yet: its block says so and names the command that measures it.

    python -m projects.tables            # re-render every table from its record
    python -m projects.tables --check    # exit 1 if a committed table differs from its record
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RECORDS = "docs/records"


@dataclasses.dataclass(frozen=True)
class Table:
    """Where a table lives and what makes it."""

    doc: str  # the Markdown file holding its block, relative to the repository root
    render: str  # "module:function" turning a record's ``data`` into the block's Markdown
    command: str  # what measures it and writes its record (``--record NAME`` added)
    measured_at: str = ""  # typed in at this commit, before records existed: no record yet
    pending: str = ""  # not measured yet, and why: the block says so until the record exists
    figure: str = ""  # a picture drawn from the same record, relative to the repository root
    plot: str = ""  # "module:function" drawing ``figure`` from (record's ``data``, path)


_BENCH = "python -m projects.benchmark"
_SWIN_B = "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py"

TABLES: Dict[str, Table] = {
    "config-table": Table(
        "docs/CONFIGS.md", "projects.model_zoo.config_table:render",
        "python -m projects.model_zoo.config_table"),
    "cost-swin-b": Table(
        "docs/COST.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods "
        "full,fixed,bitfit,norm,partial1,adapter,lora,adaptformer,e3va,e3va_plus,e3va_plusplus,"
        "e3va:saved_input_dtype=bfloat16 --size 512 --steps 3 --warmup 1"),
    "cost-retinanet": Table(
        "docs/COST.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file configs/PascalVOC/retinanet_swin_l_e3va.py "
        "--methods full,fixed,bitfit,lora,e3va,e3va_spatial --size 512 --steps 3 --warmup 1 "
        "--fit-batches 1"),
    "cost-upernet": Table(
        "docs/COST.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file configs/ADE20K/upernet_swin_l_e3va.py "
        "--methods full,fixed,bitfit,lora,e3va,e3va_spatial --size 512 --steps 3 --warmup 1 "
        "--fit-batches 1"),
    "peak-swin-b": Table(
        "docs/MEMORY.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods "
        "full,fixed,bitfit,norm,partial1,adapter,lora,adaptformer,e3va,e3va_plus,e3va_plusplus,"
        "e3va_spatial,e3va_spatial:stage_mixer=False --size 512 --batch 2 --steps 0 --warmup 1 "
        "--output output/peak-swin-b",
        figure="docs/peak_swin_b.png", plot="projects.benchmark.cost_report:plot_record"),
    "peak-swin-b-options": Table(
        "docs/MEMORY.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods full,fixed,e3va,"
        "e3va:saved_input_dtype=bfloat16,e3va:saved_input_dtype=float8_e4m3fn,"
        "e3va:recompute_branches=block,e3va:recompute_branches=stage,e3va:trunk_dtype=bfloat16 "
        "--size 512 --batch 2 --steps 0 --warmup 1 --output output/peak-swin-b-options"),
    "plan-swin-l": Table(
        "docs/MEMORY.md", "projects.benchmark.plan_report:render",
        f"{_BENCH}.plan --config-file configs/COCO/cascade_mask_rcnn_swin_l_e3va.py "
        "--gpu-memory 11GiB --methods full,fixed,lora,e3va,bitfit,adapter --check-sizes 416 "
        "--check-batches 1 --output output/plan-paper/swin-l-cascade"),
    "plan-paper": Table(
        "docs/MEMORY.md", "projects.benchmark.paper_memory:render",
        f"{_BENCH}.plan_paper"),
    "peft-swin-b": Table(
        "docs/MEMORY.md", "projects.benchmark.peft_peer:render",
        f"{_BENCH}.peft_peer --config-file {_SWIN_B} --size 448 --steps 5"),
    "cost-trunk-dtype": Table(
        "docs/MEMORY.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods fixed,e3va,"
        "e3va:trunk_dtype=bfloat16 --size 512 --batch 2 --steps 5 --warmup 1 --no-peak "
        "--fit-batches 2 --output output/cost-trunk-dtype"),
    "cost-spatial": Table(
        "docs/COST.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods full,fixed,lora,e3va,"
        "e3va_spatial,e3va_spatial:stage_mixer=False,e3va:recompute_branches=stage --size 512 "
        "--batch 2 --steps 5 --warmup 1 "
        "--no-peak --fit-batches 2 "
        "--output output/cost-spatial"),
    # Issue 37's curve (docs/ACCURACY.md, accuracy-feedback): peak and step time of the rows
    # of projects/transfer/study_validation.py's CURVE_ROWS, with fixed.
    "cost-feedback": Table(
        "docs/COST.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods full,fixed,partial1,lora,e3va,"
        "e3va_spatial,e3va_spatial:feedback_depth=1,e3va_spatial:feedback_depth=2,"
        "e3va_spatial:feedback_depth=4,e3va_spatial:feedback_depth=8 --size 512 --batch 2 "
        "--steps 3 --warmup 1 --fit-batches 2 --output output/cost-feedback"),
    # The candidates of issue 37's selection that are not on the curve, beside their own fixed,
    # full and E3VA (projects/transfer/study_validation.py's OPTION_COSTS).
    "cost-feedback-options": Table(
        "docs/COST.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods full,fixed,e3va,"
        "e3va_spatial:stage_mixer=False,e3va_spatial:feedback_depth=2:feedback_lora=True "
        "--size 512 --batch 2 --steps 3 --warmup 1 --fit-batches 2 "
        "--output output/cost-feedback-options"),
    # The rank curve's candidates, added after the first (OPTION_COSTS).
    "cost-rank": Table(
        "docs/COST.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods full,fixed,e3va,e3va:rank=32,"
        "e3va_spatial:rank=32,e3va_spatial:rank=64 --size 512 --batch 2 --steps 3 --warmup 1 "
        "--fit-batches 2 --output output/cost-rank"),
    "cost-amp-swin-b": Table(
        "docs/COST.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file {_SWIN_B} --methods full,fixed,lora,e3va,"
        "e3va:saved_input_dtype=float8_e4m3fn --size 512 --steps 5 --warmup 1 --amp",
        pending="bfloat16 autocast needs a GPU or a CPU with bfloat16 matrix units (AMX, "
        "AVX512-BF16); this build machine's CPU has neither and emulates it (one forward "
        "pass of this model at 512 px took over 17 minutes), so its step times would say "
        "nothing. The table that was here was assembled by hand from runs on another CPU"),
    "inference-latency": Table(
        "docs/INFERENCE.md", "projects.benchmark.inference_latency:render",
        f"{_BENCH}.inference_latency --images 20"),
    "highway-time": Table(
        "docs/COST.md", "projects.benchmark.highway_time:render",
        f"{_BENCH}.highway_time --steps 10"),
    "sweep-swin-b": Table(
        "docs/COST.md", "projects.benchmark.sweep:render",
        f"{_BENCH}.sweep --methods full,fixed,lora,e3va --sizes 384,512,768,1024 "
        "--batches 1,2 --no-time"),
    "sweep-swin-l": Table(
        "docs/COST.md", "projects.benchmark.sweep:render",
        f"{_BENCH}.sweep --config-file configs/COCO/cascade_mask_rcnn_swin_l_e3va.py "
        "--methods full,fixed,lora,e3va --sizes 384,512,768 --batches 1,2 --no-time"),
    "ddp-shapes": Table(
        "docs/COST.md", "projects.benchmark.ddp:render",
        f"{_BENCH}.ddp --processes 2"),
    "ddp-swin-b": Table(
        "docs/COST.md", "projects.benchmark.ddp:render",
        f"{_BENCH}.ddp --processes 2 --config-file {_SWIN_B} --steps 3"),
    "peak-accuracy": Table(
        "docs/ACCURACY.md", "projects.benchmark.cost_report:render",
        f"{_BENCH}.tuning_cost --config-file configs/Shapes/accuracy_near_mask_rcnn_swin.py "
        "--methods full,fixed,lora,e3va,e3va_spatial,e3va:recompute_branches=stage,"
        "e3va:saved_input_dtype=bfloat16,e3va:saved_input_dtype=float8_e4m3fn,"
        "e3va:trunk_dtype=bfloat16,e3va_spatial:stage_mixer=False,e3va_spatial:rank=32,"
        "e3va_spatial:stage_mixer=False:conv_kernels=(),"
        "e3va_spatial:stage_mixer=False:read_state=False,"
        "e3va_spatial:stage_mixer=False:conv_kernels=(3,5,7) "
        "--size 128 --batch 4 --steps 0 --warmup 1 "
        "--output output/peak-accuracy"),
    "adapter-init": Table(
        "docs/ACCURACY.md", "projects.transfer.adapter_init:render",
        "python -m projects.transfer.adapter_init"),
    "pretrain-scenes": Table(
        "docs/ACCURACY.md", "projects.pretrain.pretrain_swin:render",
        "python -m projects.pretrain.pretrain_swin --run-dir projects/pretrain/runs/scenes_e32"),
    "accuracy-fit": Table(
        "docs/ACCURACY.md", "projects.transfer.fit_check:render",
        "python -m projects.transfer.fit_check"),
    "shared-trunk": Table(
        "docs/INFERENCE.md", "projects.benchmark.shared_trunk:render",
        f"{_BENCH}.shared_trunk --images 32"),
    "gpu-check": Table(
        "docs/INSTALL.md", "projects.gpu_check.runner:render", "python -m projects.gpu_check",
        pending="no GPU run yet"),
}


# Blocks a script renders from a set of records of its own (one per run) rather than one record
# here; that script's test checks them (the accuracy study: tests/test_accuracy_study.py).
RECORD_SETS = {name: "projects.transfer.study_render" for name in (
    "accuracy-near", "accuracy-far", "accuracy-dense", "accuracy-variants", "accuracy-detail",
    "accuracy-gap", "accuracy-curves-near", "accuracy-curves-far", "accuracy-curves-dense",
    "accuracy-recovery-curves", "accuracy-summary", "accuracy-lr", "accuracy-feedback",
    "accuracy-selection", "accuracy-budget")}


def _path(relative: str) -> str:
    return os.path.join(ROOT, relative)


def record_path(name: str) -> str:
    return _path(os.path.join(RECORDS, f"{name}.json"))


def current_commit() -> str:
    """The commit measured (``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()

        return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain")
                                                      else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markers(name: str):
    return f"<!-- begin: {name} -->", f"<!-- end: {name} -->"


def block(text: str, name: str) -> Optional[str]:
    """The Markdown between ``name``'s markers (without them), or None when absent."""
    begin, end = markers(name)
    match = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    return None if match is None else match.group(1)


def table_row(cells: Iterable[str]) -> str:
    """One row of a Markdown table."""
    return "| " + " | ".join(cells) + " |"


def table_head(header: Sequence[str]) -> List[str]:
    """A Markdown table's header row and the separator under it."""
    return [table_row(header), "|" + "---|" * len(header)]


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with ``name``'s block replaced by ``body``; the markers must be there."""
    if block(text, name) is None:
        raise KeyError(f"no '{markers(name)[0]}' ... '{markers(name)[1]}' block")
    begin, end = markers(name)
    pattern = re.escape(begin) + r"\n.*?" + re.escape(end)
    return re.sub(pattern, lambda _: f"{begin}\n{body.rstrip()}\n{end}", text, count=1,
                  flags=re.S)


def renderer(name: str) -> Callable[[Dict[str, Any]], str]:
    module, function = TABLES[name].render.split(":")
    return getattr(importlib.import_module(module), function)


def draw(name: str, record: Optional[Dict[str, Any]] = None) -> None:
    """Draw table ``name``'s figure, if it has one, from its record (default: the committed
    one), so that the picture and the table never come from different measurements."""
    table = TABLES[name]
    if not table.figure:
        return
    if record is None:
        with open(record_path(name)) as f:
            record = json.load(f)
    module, function = table.plot.split(":")
    getattr(importlib.import_module(module), function)(record["data"], _path(table.figure))


def render(name: str, record: Optional[Dict[str, Any]] = None) -> str:
    """The block of table ``name`` from its record (default: the committed one): the table,
    then where it comes from."""
    if record is None:
        with open(record_path(name)) as f:
            record = json.load(f)
    body = renderer(name)(record["data"]).rstrip()
    link = os.path.relpath(record_path(name), os.path.dirname(_path(TABLES[name].doc)))
    source = (f"_Generated from [`{RECORDS}/{name}.json`]({link}), measured at "
              f"{record['commit']} by `{record['command']}`; regenerate with "
              f"`{TABLES[name].command} --record {name}`._")
    return f"{body}\n\n{source}\n"


def publish(name: str, data: Dict[str, Any], render_function: str, command: str) -> str:
    """Write ``data`` as table ``name``'s record and its block into its document; returns the
    record's path. ``render_function`` ("module:function") must be the table's renderer: a
    script cannot publish into another script's table. ``command``: what measured ``data``."""
    if name not in TABLES:
        raise SystemExit(f"--record {name}: no such table; registered: {sorted(TABLES)} "
                         "(projects/tables.py)")
    table = TABLES[name]
    if table.render != render_function:
        raise SystemExit(f"--record {name}: that table is rendered by {table.render}, "
                         f"not by {render_function}")
    record = {"table": name, "commit": current_commit(), "command": command, "data": data}
    record = json.loads(json.dumps(record))  # as it will be read back
    body = render(name, record)
    path = record_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=False)
        f.write("\n")
    doc = _path(table.doc)
    with open(doc) as f:
        text = f.read()
    with open(doc, "w") as f:
        f.write(replace_block(text, name, body))
    draw(name, record)
    return path


def problems() -> List[str]:
    """Every way the committed docs and records disagree (empty when they agree)."""
    found = []
    documents: Dict[str, str] = {}
    for name, table in TABLES.items():
        if table.doc not in documents:
            with open(_path(table.doc)) as f:
                documents[table.doc] = f.read()
        current = block(documents[table.doc], name)
        has_record = os.path.isfile(record_path(name))
        if current is None:
            found.append(f"{name}: no block in {table.doc}")
        elif table.measured_at:
            if has_record:
                found.append(f"{name}: has a record now; drop its measured_at in "
                             "projects/tables.py")
            elif f"measured at {table.measured_at}" not in current or table.command not in current:
                found.append(f"{name}: its block must say 'measured at {table.measured_at}' and "
                             f"name its command `{table.command}`")
        elif not has_record:
            if not table.pending:
                found.append(f"{name}: no record {RECORDS}/{name}.json")
            elif current != pending_block(name):
                found.append(f"{name}: not measured yet; its block must be what "
                             "`python -m projects.tables` writes for it")
        elif table.pending:
            found.append(f"{name}: has a record now; drop its pending in projects/tables.py")
        elif current != render(name):
            found.append(f"{name}: the table in {table.doc} differs from what its record gives; "
                         "run `python -m projects.tables`")
        if has_record and table.figure and not os.path.isfile(_path(table.figure)):
            found.append(f"{name}: no figure {table.figure}; run `python -m projects.tables`")
    for doc, text in documents.items():
        for name in re.findall(r"<!-- begin: (\S+) -->", text):
            if name not in TABLES and name not in RECORD_SETS:
                found.append(f"{name}: a block in {doc} that no table is registered for")
    for file in sorted(os.listdir(_path(RECORDS))) if os.path.isdir(_path(RECORDS)) else []:
        if file.endswith(".json") and file[:-5] not in TABLES:
            found.append(f"{RECORDS}/{file}: a record of no registered table")
    return found


def pending_block(name: str) -> str:
    """The block of a registered table that has no record yet: why, and what measures it."""
    table = TABLES[name]
    return (f"_Not measured yet: {table.pending}. `{table.command} --record {name}` measures "
            "it and writes this table._\n")


def command_line(module: str, argv: Optional[List[str]]) -> str:
    """How a script was run, for its record: ``python -m module args`` without ``--record``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--record" in args:
        i = args.index("--record")
        del args[i : i + 2]
    return " ".join(["python -m", module, *(shlex.quote(a) for a in args)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    if not args.check:
        for name, table in TABLES.items():
            has_record = os.path.isfile(record_path(name))
            if has_record or table.pending:
                doc = _path(table.doc)
                with open(doc) as f:
                    text = f.read()
                body = render(name) if has_record else pending_block(name)
                with open(doc, "w") as f:
                    f.write(replace_block(text, name, body))
            if has_record:
                draw(name)
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
