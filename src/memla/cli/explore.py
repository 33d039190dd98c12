"""`memla explore`: a local web page to edit one fact, watch it in every language and compare methods (memla[ui])."""

from __future__ import annotations

import argparse
import ipaddress

from memla.cli._common import (
    add_max_tokens_argument,
    add_method_argument,
    add_model_argument,
    console,
    int_at_least,
    load_model_from_args,
)
from memla.errors import MemlaError

ORDER = 3
DEFAULT_METHODS = "memla-local,rome"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explore",
        help="open a local web page to edit a fact, watch it in 12 languages, compare methods and see the neurons",
        description="Load the model once and serve a web page (Gradio; pip install 'memla[ui]') on which you:\n"
        "  - pick a fact from a dataset or type one in (prompt with {}, subject, new and old object, per language);\n"
        "  - run one or several editing methods, with their configs shown and editable;\n"
        "  - see per language and method P(new) and P(old) before -> after and the flip (table and heatmap), the\n"
        "    greedy completions, the neighbourhood prompts kept or broken (NS-margin, NS-keep) and the fluency of\n"
        "    the edited continuation, and MEMLA's knowledge neurons per layer and language;\n"
        "  - download the edit as a PEFT adapter and copy the `memla edit` command that reproduces it.\n"
        "Every edit starts from the pristine weights; edits are queued, so two visitors never see each other's "
        "edits.\nBad input is a message on the page (the --max-tokens limit included), never a traceback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  memla explore                                  # the embedded Gemma 3 270M, http://127.0.0.1:7860\n"
        "  memla explore --model Qwen/Qwen2.5-0.5B --device cuda --port 8080\n"
        "  memla explore --dataset my-facts.json --methods memla,ike",
    )
    p.add_argument("--port", type=int_at_least(1), default=7860, help="port of the page (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only); another address lets anyone "
                   "who reaches it run edits on this machine, without a login (a warning is printed)")
    p.add_argument("--dataset", action="append", default=None, metavar="NAME_OR_FILE",
                   help="dataset to pick facts from: a built-in name or a JSON/JSONL file in the MKEB layout "
                   "(repeatable; default: mkeb-mini); the page itself reads no paths")
    add_method_argument(p, "--methods", default=DEFAULT_METHODS,
                        help="comma-separated methods chosen when the page opens (registered: %(methods)s; "
                        "default: %(default)s); the page offers them all")
    add_max_tokens_argument(p)
    add_model_argument(p)
    p.set_defaults(func=run)


def _warn_host(host: str) -> None:
    """Say loudly that a non-loopback address exposes the page."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOCAL_HOSTS
    if not loopback:
        console.print(f"[bold red]warning:[/bold red] --host {host}: the page is reachable from other machines; "
                      "anyone who can reach it can run edits here (there is no login)")


def run(args: argparse.Namespace) -> int:
    from memla.data import load_dataset
    from memla.editors import editor_entry
    from memla.explore.app import build_app, require_gradio
    from memla.explore.session import Explorer, Settings

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise MemlaError(f"--methods names no method (got {args.methods!r}); e.g. --methods memla,rome")
    for method in methods:  # a typo fails before the model loads
        editor_entry(method)
    datasets = {name: load_dataset(name) for name in (args.dataset or ["mkeb-mini"])}
    empty = [name for name, records in datasets.items() if not records]
    if empty:
        raise MemlaError(f"--dataset {empty[0]}: no records")
    require_gradio()  # all before the model loads
    _warn_host(args.host)
    model, tokenizer = load_model_from_args(args)
    settings = Settings(max_tokens=args.max_tokens, model=args.model, dtype=args.dtype, device=args.device,
                        device_map=args.device_map)
    explorer = Explorer(model, tokenizer, settings)
    try:
        app = build_app(explorer, datasets, methods=methods)
        app.queue()
        try:
            app.launch(server_name=args.host, server_port=args.port, ssr_mode=False, quiet=True, show_error=False,
                       prevent_thread_lock=True)
        except OSError:  # Gradio's own message names its environment variables; say it in this command's terms
            raise MemlaError(f"cannot serve on {args.host}:{args.port}: the port is in use or the address is not "
                             "this machine's (choose another --port or --host)") from None
        console.print(f"memla explore: http://{args.host}:{args.port} (Ctrl-C to stop)")
        app.block_thread()  # until Ctrl-C
    finally:
        explorer.close()
    return 0
