"""``mesanet train | eval | generate | compare | synth | needle | mesaopt``: the command line over the pipelines.

    mesanet train small optim.lr=1e-3 model.mixer=gla                  # a preset name (or a YAML file) + dotted overrides
    mesanet train small --print-config                                 # the resolved config; `train --help` lists every key
    mesanet eval runs/small --tol 1e-4                                  # loss/ppl, per-position NLL, 2x/4x length, CG stats
    mesanet generate runs/small --prompt "def parse(" --temperature 0.8 --top-p 0.95
    mesanet compare compare                                             # several models, one data/token budget, a report
    mesanet synth --quick                                               # the synthetic ICL suite (MAD, MQAR, regression)
    mesanet needle runs/small                                           # needle-in-a-haystack at and beyond the training length
    mesanet mesaopt list                                                # mesa-optimization analyses ("Uncovering ..." paper)

Training also runs under torchrun: ``torchrun --nproc_per_node 2 -m mesanet train small``.
Unknown config keys are errors that list the valid ones. Options may come anywhere among the positionals. Every
user error ends in ONE line on stderr, ``mesanet <command>: error: <what was expected, what arrived>``, with exit
code 2 (usage and config) or 1 (a runtime failure, e.g. a non-finite loss); ``--debug`` anywhere on the command line
(or ``MESANET_DEBUG=1``) shows the traceback instead (:mod:`mesanet.utils.cli_errors`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path
from typing import Sequence

from mesanet.utils.cli_errors import add_debug_flag, device_arg, run_cli, split_debug


def _config_and_overrides(args: Sequence[str]) -> tuple[Path | None, list[str]]:
    """The config file (a path or a packaged preset name, first) and the ``key=value`` overrides."""
    from mesanet.presets import resolve_config

    path = resolve_config(args[0]) if args and "=" not in args[0] else None
    return path, list(args[1:] if path is not None else args)


def with_config_keys(parser: argparse.ArgumentParser, config_class: str) -> None:
    """Append every config key of ``config_class`` (``"module:Class"``) with its type and default to ``parser``'s
    help, imported only when the help is shown (so building the parser stays cheap)."""
    plain = parser.format_help

    def format_help() -> str:
        import importlib

        from mesanet.utils.config import fields_help

        module, _, name = config_class.partition(":")
        return f"{plain()}\n{fields_help(getattr(importlib.import_module(module), name))}\n"

    parser.format_help = format_help


def cmd_train(ns: argparse.Namespace) -> None:
    from mesanet.train.__main__ import main as train_main

    train_main([*ns.args, *(["--no-progress"] if ns.no_progress else []), *(["--print-config"] if ns.print_config else [])])


def solver_overrides(ns: argparse.Namespace) -> dict | None:
    """The solver-report flags that were given (``--tol``, ``--max-iter``, ``--preconditioner``,
    ``--precondition-every``) as :class:`~mesanet.ops.SolverSettings` fields replacing the model's
    ``solver_inference``; ``None``: none given."""
    flags = (
        ("tol", ns.tol),
        ("max_iter", ns.max_iter),
        ("preconditioner", ns.preconditioner),
        ("precondition_every", ns.precondition_every),
    )
    given = {k: v for k, v in flags if v is not None}
    return given or None


def text_tokens(model_dir: Path, path: str):
    """The token ids of the UTF-8 text file ``path`` under the tokenizer saved in ``model_dir`` (``--val-text``)."""
    import numpy as np

    from mesanet.eval.checkpoint import load_tokenizer
    from mesanet.utils.config import read_text

    text = read_text(Path(path), "--val-text file")
    return np.asarray(load_tokenizer(model_dir)(text, add_special_tokens=False).input_ids, dtype=np.int64)


def cmd_eval(ns: argparse.Namespace) -> None:
    from mesanet.eval import evaluate_run
    from mesanet.eval.run_files import resolve_model_dir

    val_tokens = text_tokens(resolve_model_dir(ns.path)[0], ns.val_text) if ns.val_text is not None else None
    report = evaluate_run(
        ns.path,
        solver=solver_overrides(ns),
        extrapolation=tuple(ns.extrapolation),
        max_windows=ns.max_windows,
        out_dir=ns.out,
        progress=not ns.no_progress,
        verify=not ns.allow_modified_weights,
        device=ns.device,
        train_len=ns.train_len,
        val_tokens=val_tokens,
    )
    print(Path(report["files"]["summary_md"]).read_text())


def cmd_generate(ns: argparse.Namespace) -> None:
    from mesanet.eval import generate_text, load_checkpoint
    from mesanet.eval.run_files import resolve_model_dir

    model_dir, _ = resolve_model_dir(ns.path)
    loaded = load_checkpoint(model_dir, device=ns.device, verify=not ns.allow_modified_weights)
    print(ns.prompt, end="", flush=True)
    generate_text(
        loaded.model,
        loaded.tokenizer,
        ns.prompt,
        max_new_tokens=ns.max_new_tokens,
        temperature=ns.temperature,
        top_k=ns.top_k,
        top_p=ns.top_p,
        seed=ns.seed,
        stream=lambda piece: print(piece, end="", flush=True),
    )
    print()


def cmd_compare(ns: argparse.Namespace) -> None:
    from mesanet.eval.compare import CompareConfig, compare
    from mesanet.utils.config import load

    path, overrides = _config_and_overrides(ns.args)
    report = compare(load(CompareConfig, path, overrides), progress=not ns.no_progress)
    print(Path(report).read_text())
    print(f"report: {report}")


#: Sub-commands whose own argument parser lives with the pipeline: ``name -> (module, help)``; the module's
#: ``main(argv)`` receives everything after the sub-command.
DELEGATED = {
    "synth": (
        "mesanet.synth.__main__",
        "run the synthetic in-context-learning grid (task x mixer x lr x seed); --quick for ~10 min",
    ),
    "needle": ("mesanet.eval.needle", "needle-in-a-haystack retrieval of a trained LM at and beyond its training length"),
    "mesaopt": ("mesanet.mesaopt.__main__", "mesa-optimization analyses: train the model zoo, GD construction, probes, ..."),
}


def run_delegated(command: str, argv: Sequence[str]) -> int:
    """``mesanet <command> ARGS``: hand ``ARGS`` untouched to the pipeline's own ``main(argv)`` (its options,
    ``--help`` included, are its own; argparse would otherwise swallow them)."""
    import importlib

    module = importlib.import_module(DELEGATED[command][0])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return int(module.main(list(argv)) or 0)


#: ``--device`` (eval, generate), as ``train``'s ``device``: ``auto`` = CUDA when present.
DEVICE_HELP = "auto, cpu, cuda or cuda:N (default auto: CUDA when present, else CPU)"

#: ``--allow-modified-weights`` (eval, generate): the override of the SHA-256 check of a trained model's files.
ALLOW_MODIFIED_HELP = "load the model even if its files no longer match the SHA-256 recorded when training wrote them"


def build_parser() -> argparse.ArgumentParser:
    """The ``mesanet`` parser; ``parser.commands`` maps each non-delegated sub-command to its own parser."""
    parser = argparse.ArgumentParser(prog="mesanet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a model (a preset name or YAML config, and key=value overrides)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | PRESET | key=value")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    with_config_keys(p, "mesanet.train.config:TrainConfig")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run or model directory; writes eval.json, per_position.csv/png, summary.md")
    p.add_argument("path", help="runs/<name> or a model directory")
    p.add_argument(
        "--tol", type=float, default=None, help="CG tolerance of the Mesa solver report (default: the model's solver_inference)"
    )
    p.add_argument("--max-iter", type=int, default=None, help="CG step limit of the solver report (default: the model's)")
    p.add_argument(
        "--preconditioner",
        choices=("none", "jacobi", "chunk", "chunk-keys"),  # mesanet.ops.PRECONDITIONERS (not imported: no torch for --help)
        default=None,
        help="CG preconditioner of the solver report (default: the model's)",
    )
    p.add_argument(
        "--precondition-every",
        type=int,
        default=None,
        metavar="N",
        help="refresh the chunk preconditioners every N tokens in the solver report (default: the model's; once per chunk)",
    )
    p.add_argument("--extrapolation", type=int, nargs="*", default=[2, 4], help="multiples of the training length (default 2 4)")
    p.add_argument(
        "--max-windows",
        type=int,
        default=32,
        help="windows at the longest length; every length scores the same tokens (default 32)",
    )
    p.add_argument("--out", default=None, help="output directory (default: the run directory)")
    p.add_argument(
        "--train-len",
        type=int,
        default=None,
        help="the training length in tokens (default: the run's data.seq_len; needed for a bare model directory)",
    )
    p.add_argument(
        "--val-text",
        default=None,
        metavar="FILE",
        help="evaluate on this UTF-8 text file, tokenized with the model directory's tokenizer "
        "(default: the run's validation split; needed for a bare model directory)",
    )
    p.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-modified-weights", action="store_true", help=ALLOW_MODIFIED_HELP)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("generate", help="stream a continuation of a prompt from a run or model directory")
    p.add_argument("path", help="runs/<name> or a model directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", type=device_arg, default="auto", help=DEVICE_HELP)
    p.add_argument("--allow-modified-weights", action="store_true", help=ALLOW_MODIFIED_HELP)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser(
        "compare",
        help="train and evaluate several models on the same data and budget; writes a report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="CONFIG.yaml | PRESET | key=value")
    with_config_keys(p, "mesanet.eval.compare:CompareConfig")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=cmd_compare)

    parser.commands = dict(sub.choices)
    for command in parser.commands.values():
        add_debug_flag(command)
    for name, (_, text) in DELEGATED.items():
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER, help=f"arguments of `mesanet {name}` (see `mesanet {name} --help`)")
    return parser


def dispatch(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Run one command line (``--debug`` already taken off); errors propagate to :func:`run_cli`."""
    if argv and argv[0] in DELEGATED:
        return run_delegated(argv[0], argv[1:])
    if argv and argv[0] in parser.commands:  # the sub-command's own parser: options anywhere among the positionals
        ns = parser.commands[argv[0]].parse_intermixed_args(argv[1:])
    else:
        ns = parser.parse_args(argv)  # --help, a missing or unknown command
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ns.run(ns)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``mesanet ARGS``; returns the exit code (0, 1 runtime failure, 2 usage or config error, 130 Ctrl-C)."""
    argv, debug = split_debug(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = argv and (argv[0] in DELEGATED or argv[0] in parser.commands)
    return run_cli(f"mesanet {argv[0]}" if known else "mesanet", functools.partial(dispatch, parser), argv, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
