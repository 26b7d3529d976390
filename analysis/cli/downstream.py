"""Downstream multiple-choice accuracy through lm-eval, on the in-memory model (and a pruned copy of it).

Runs lm-eval tasks whose data is on this machine: LayerScope's own ``layerscope_cloze`` (shipped with the code),
lm-eval task YAMLs in the folders given by ``--task-dir`` or ``$LAYERSCOPE_TASKS``, and the standard tasks
(mmlu, hellaswag, winogrande, arc_easy, arc_challenge, piqa) only where their dataset is already in the local
Hugging Face cache. Nothing is downloaded. A task whose data is missing is an error, never a number.

Prints JSON: per task ``acc``, ``acc_stderr``, ``acc_norm``, ``acc_norm_stderr``, ``n`` for the original and, with
``--remove``, for the pruned copy, plus ``recovery`` (pruned acc / original acc). ``--out DIR`` also writes
``DIR/downstream.json``. ``--list`` lists the tasks and whether their data is here. Blocks are 0-based.

Examples:
  python -m analysis downstream --list
  python -m analysis downstream --model default --tasks layerscope_cloze --remove 12,13 --out out/downstream
"""

import sys

NAME = "downstream"
HELP = "multiple-choice accuracy through lm-eval (original, and pruned with --remove) (JSON)"


def add_arguments(p):
    from analysis.cli.common import add_model_args, block_list, non_negative_int, positive_int

    add_model_args(p)
    p.add_argument("--tasks", default="layerscope_cloze", help="comma-separated task names (see --list)")
    p.add_argument("--list", action="store_true", help="list the tasks and whether their data is here; run nothing")
    p.add_argument(
        "--task-dir",
        action="append",
        default=None,
        metavar="DIR",
        help="a folder of lm-eval task YAMLs (repeatable; default: $LAYERSCOPE_TASKS)",
    )
    p.add_argument(
        "--allow-task-code",
        action="store_true",
        help="run the Python helpers a task folder's YAML names (!function); off: such tasks are refused",
    )
    p.add_argument(
        "--remove",
        default=None,
        type=block_list("--remove"),
        help="also evaluate a copy without these blocks: '12,13', '12-15'",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N examples of each task")
    p.add_argument(
        "--num-fewshot", type=non_negative_int, default=None, help="few-shot examples (default: the task's, or 0)"
    )
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", default=None, help="also write DIR/downstream.json (new or empty unless --overwrite)")
    from analysis.cli.common import add_overwrite_arg

    add_overwrite_arg(p)


def run(args) -> int:
    from analysis import destinations
    from analysis.cache import write_json
    from analysis.cli.common import TqdmProgress, load, out_destination, print_json
    from analysis.evaluation import downstream as ds

    task_dirs = args.task_dir  # None: $LAYERSCOPE_TASKS
    if args.list:
        print_json({"tasks": [t.to_dict() for t in ds.available_tasks(task_dirs, allow_code=args.allow_task_code)]})
        return 0
    infos = ds.find_tasks(args.tasks, task_dirs, allow_code=args.allow_task_code)  # unknown: DownstreamError
    missing = [t for t in infos if not t.available]
    if missing:
        raise ds.DownstreamError("; ".join(f"{t.name}: {t.reason}" for t in missing))
    if args.limit is not None and args.limit < 1:
        raise ds.DownstreamError(f"--limit must be at least 1 (got {args.limit})")
    if ds.lm_eval_version() is None:
        raise ds.DownstreamError("lm-eval is not installed; run `make setup`")
    dest = out_destination(args) if args.out else None
    blocks = None
    if args.remove is not None:
        from analysis.changes.remove_blocks import parse_blocks

        blocks = parse_blocks(args.remove, what="--remove")
    lm = load(args)
    candidate = None
    if blocks is not None:
        from analysis.changes.remove_blocks import remove_blocks, validate_removal

        blocks = validate_removal(blocks, lm.n_blocks)
        candidate = remove_blocks(lm.model, blocks)
        print(f"[downstream] removed blocks {blocks}", file=sys.stderr)
    names = [t.name for t in infos]
    result = ds.evaluate_downstream(
        lm.model,
        lm.tokenizer,
        names,
        candidate=candidate,
        candidate_name="pruned",
        limit=args.limit,
        batch_size=args.batch_size,
        progress=TqdmProgress("downstream"),
        task_dirs=task_dirs,
        num_fewshot=args.num_fewshot,
        original_key=lm.fingerprint,
        allow_code=args.allow_task_code,
        candidate_key=_fingerprint(candidate) if candidate is not None else "",
    )
    result["model"] = {
        "source": args.model,
        "fingerprint": lm.fingerprint,
        "blocks": lm.n_blocks,
        "parameters": lm.n_parameters(),
    }
    if blocks is not None:
        result["removed_blocks"] = blocks
    result["task_info"] = {t.name: t.to_dict() for t in infos}
    if dest is not None:
        with destinations.writing(dest, "downstream") as out_dir:
            write_json(out_dir / "downstream.json", result)
    print_json(result)
    failed = [(name, row["reason"]) for run in _runs(result) for name, row in run["tasks"].items() if not row["ran"]]
    if failed:
        print("error: " + "; ".join(f"{n} did not run: {r}" for n, r in failed), file=sys.stderr)
        return 2
    return 0


def _runs(result: dict) -> list[dict]:
    return [v for v in result.values() if isinstance(v, dict) and "tasks" in v]


def _fingerprint(model) -> str:
    from analysis.model.loading import fingerprint

    return fingerprint(model)
