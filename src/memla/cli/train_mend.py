"""`memla train-mend`: train MEND's editor networks for a model (Mitchell et al. 2022).

Example::

    memla train-mend --dataset mkeb-mini --steps 150
    memla bench --dataset mkeb-mini --split test --methods mend --out runs/mend

The checkpoint goes to ``$MEMLA_CACHE/mend/<model fingerprint>/`` (``--out`` to
choose another folder; then point the MEND config's ``checkpoint`` at it).
"""

from __future__ import annotations

import argparse

from memla.cli._common import add_model_argument, console, load_model_from_args, print_table

ORDER = 46


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``memla train-mend`` to the top-level parser.

    Args:
        subparsers: the top-level sub-parser collection.
    """
    p = subparsers.add_parser(
        "train-mend",
        help="train the MEND editor networks for a model (needed before --methods mend)",
        description="Train MEND's gradient-transform networks (Mitchell et al. 2022) on a dataset's dev "
        "split: one edit per step, loss = c_edit * NLL(target_new | edit prompt, paraphrases) + "
        "c_loc * KL(pre-edit || post-edit on neighbourhood prompts). The model's weights never change. "
        "The checkpoint (safetensors + JSON) is written every --save-every steps and at the end, "
        "by default to $MEMLA_CACHE/mend/<model fingerprint>/, where the MEND editor looks for it.",
    )
    p.add_argument("--dataset", default="mkeb-mini", help="training data: file or built-in name (default: %(default)s)")
    p.add_argument("--split", default="dev", help="split to train on; 'all' for every record (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps, one edit each (default: the config's, 500)")
    p.add_argument("--out", default=None, help="checkpoint folder (default: $MEMLA_CACHE/mend/<model fingerprint>)")
    p.add_argument("--config", default=None, help="YAML/JSON file with MEND settings (MendConfig keys)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default: the config's, 100)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the config's, 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train MEND as asked by the parsed arguments; returns the exit status."""
    import dataclasses

    from memla.config import load_config
    from memla.data import load_dataset
    from memla.editors.mend import META, MendConfig
    from memla.editors.mend_train import train_mend
    from memla.errors import MemlaError
    from memla.outputs import check_out_dir

    config = load_config(MendConfig, args.config)
    overrides = {k: v for k, v in (("save_every", args.save_every), ("seed", args.seed)) if v is not None}
    if overrides:
        try:
            config = dataclasses.replace(config, **overrides)
        except ValueError as err:
            raise MemlaError(f"invalid option: {err}") from None
    if args.steps is not None and args.steps < 1:
        raise MemlaError("--steps must be at least 1")
    if args.out is not None:
        check_out_dir(args.out, option="--out", markers=(META,))
    records = load_dataset(args.dataset, split=None if args.split == "all" else args.split)
    model, tokenizer = load_model_from_args(args)
    result = train_mend(model, tokenizer, records, config=config, steps=args.steps, out=args.out,
                        progress=not args.no_progress, dataset=f"{args.dataset}:{args.split}")
    last = result.history[-1] if result.history else {}
    print_table("MEND training", ["property", "value"], [
        ("steps", result.steps),
        ("seconds", result.seconds),
        ("final loss (last window)", last.get("total", "")),
        ("edit NLL / locality KL", f"{last.get('edit', '')} / {last.get('loc', '')}"),
        ("edit success (last window)", last.get("es", "")),
        ("checkpoint", result.directory),
    ])
    if args.out is not None:
        console.print(f"[dim]use it with a MEND config holding  checkpoint: {result.directory}[/dim]")
    return 0
