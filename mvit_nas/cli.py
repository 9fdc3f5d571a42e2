"""``mvit-nas``: parse arguments, call the package, print. No logic lives here."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from mvit_nas.config import PRESETS
from mvit_nas.data import ALLOWED as DATASETS
from mvit_nas.fidelity import KINDS as FIDELITIES
from mvit_nas.fidelity import FidelitySpec
from mvit_nas.pipeline import train_run
from mvit_nas.proxy import KINDS as PROXIES
from mvit_nas.proxy import ProxySpec
from mvit_nas.settings import (
    DEFAULT_TRIALS,
    DEFAULT_WORKERS,
    LATENCY_SOURCES,
    SAMPLERS,
    SEARCH_THREADS,
    RunOptions,
    SearchSettings,
)
from mvit_nas.validate import InputError
from mvit_nas.verify import EPOCHS_FACTOR, verify_run

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


def _defaults(function_or_record: Any) -> dict[str, Any]:
    """The package's own defaults, so that the CLI's never drift from them."""
    parameters = inspect.signature(function_or_record).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


_SEARCH, _PROXY, _TRAIN, _RUN, _FIDELITY = (
    _defaults(f) for f in (SearchSettings, ProxySpec, train_run, RunOptions, FidelitySpec)
)
_VERIFY = _defaults(verify_run)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _add_device_args(parser: argparse.ArgumentParser, threads_default: str = "all cores") -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto | eager | onnxruntime | cudagraph | compile (default: onnxruntime on CPU, cudagraph on CUDA)",
    )
    parser.add_argument("--threads", type=_positive_int, help=f"CPU threads for latency (default: {threads_default})")


def _add_cluster_args(parser: argparse.ArgumentParser, unit: str, workers: int, gpus: float) -> None:
    """Where the ``unit``s (trials, jobs) run: how many at once, on which Ray, with what share of a GPU."""
    parser.add_argument(
        "--workers", type=_positive_int, default=workers, help=f"concurrent {unit}s (default: {workers})"
    )
    parser.add_argument("--address", help="an existing Ray cluster (ray://host:port or host:port)")
    parser.add_argument(
        "--gpus-per-trial",
        type=float,
        default=gpus,
        help=f"on --device cuda, a {unit}'s share of a GPU; 0.5 runs two per GPU (default: {gpus:g})",
    )


def _load_arch(args: argparse.Namespace) -> Any:
    from mvit_nas.config import load_config, preset

    return preset(args.variant) if args.variant else load_config(args.config)


def _cmd_space(args: argparse.Namespace) -> None:
    from mvit_nas.space import load_space

    space = load_space(args.space)
    seeds = space.seeds_inside()
    if args.json:
        knobs = {knob: list(values) for knob, values in space.choices.items()}
        print(json.dumps({"name": space.name, "architectures": space.cardinality, "knobs": knobs, "seeds": seeds}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"search space {space.name}: {space.cardinality:,} architectures ({space.cardinality:.2e})")
    table.add_column("knob")
    table.add_column("choices")
    for knob, values in space.choices.items():
        table.add_row(knob, ", ".join(str(value) for value in values))
    console = Console()
    console.print(table)
    for name, inside in seeds.items():
        console.print(f"seed {name}: {'inside the space' if inside else 'NOT in the space'}")


def _cmd_profile(args: argparse.Namespace) -> None:
    from mvit_nas.latency import resolve_spec
    from mvit_nas.profiler import profile

    cfg = _load_arch(args)
    resolution = args.resolution or cfg.resolution
    spec = resolve_spec(
        device=args.device, backend=args.backend, batch_size=args.batch_size, height=resolution, threads=args.threads
    )
    result = profile(cfg, spec, predict=args.predict).to_dict()
    if args.json:
        print(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    latency = result["latency_ms"]
    name = args.variant or args.config
    table = Table(title=f"{name} @ {resolution} px, batch {spec.batch_size}", show_header=False)
    table.add_row("parameters", f"{result['params']:,}")
    table.add_row("multiply-adds", f"{result['flops'] / 1e9:.3f} G ({result['flops']:,})")
    table.add_row(
        f"latency ({spec.device}, {spec.backend}, {spec.threads} threads)",
        f"median {latency['median']:.2f} ms  p10 {latency['p10']:.2f}  p90 {latency['p90']:.2f}  (n={latency['n']})"
        + (f", {latency['discarded']} runs slowed by other work left out" if latency.get("discarded") else ""),
    )
    if args.predict:
        table.add_row("predicted latency (latency table)", f"{latency['predicted']:.2f} ms")
    peak = result["peak_memory_mb"]
    table.add_row("peak memory", "n/a for this backend" if peak is None else f"{peak:.1f} MB")
    Console().print(table)


class _Progress:
    """On a terminal, a rich progress bar; otherwise (a log file, nohup, CI) one line per finished trial."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = None
        if sys.stdout.isatty():
            columns = (TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"))
            self._bar = Progress(*columns, TimeElapsedColumn())
            self._task = self._bar.add_task("search", total=total, status="starting")

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, progress: Any) -> None:
        if self._bar is None:
            print(progress.line(), flush=True)
            return
        status = f"feasible {progress.feasible}  front {progress.front}"
        self._bar.update(self._task, completed=progress.finished, status=status)


def _cmd_latency_table_build(args: argparse.Namespace) -> None:
    from mvit_nas.latency import resolve_spec
    from mvit_nas.predictor import build_table, default_table_path
    from mvit_nas.space import load_space

    threads = SEARCH_THREADS if args.threads is None else args.threads  # the table serves searches
    spec = resolve_spec(device=args.device, backend=args.backend, batch_size=args.batch_size, threads=threads)
    space = load_space(args.space)
    table = build_table(spec, space)
    path = table.save(args.out or default_table_path(spec))
    print(f"latency table for {spec.device}/{spec.backend}/{spec.threads} threads written to {path}")


def _cmd_search(args: argparse.Namespace) -> int:
    from mvit_nas.pipeline import run_search

    settings = SearchSettings.create(
        args.budget_ms,
        space_file=args.space,
        device=args.device,
        backend=args.backend,
        threads=args.threads,
        proxy=args.proxy,
        epochs=args.epochs,
        proxy_scale=args.proxy_scale,
        dataset=args.dataset,
        sampler=args.sampler,
        seed=args.seed,
        latency_source=args.latency,
        fidelity=FidelitySpec(args.fidelity, args.eta, args.max_budget_epochs),
        here=args.address is None,  # on a cluster the workers, not this machine, need the device
    )
    options = RunOptions(
        trials=args.trials,
        timeout=args.timeout,
        workers=args.workers,
        address=args.address,
        trial_timeout=args.trial_timeout,
        gpus_per_trial=args.gpus_per_trial,
        verify_epochs=args.verify_epochs,
    )
    with _Progress(total=args.trials) as bar:
        result = run_search(settings, args.run_dir, options, progress=bar.update, verify_progress=_print_line)
    if result.export is None:
        print(
            f"stopped after {result.outcome.finished} finished trials; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    for row in result.front_latency:
        verdict = "fits" if row.dropped is None else "DROPPED from the front: over budget"
        print(
            f"front trial {row.trial}: searched at {row.search_ms:.2f} ms, re-measured {row.measured_ms:.2f} ms "
            f"({row.low_ms:.2f}-{row.high_ms:.2f}); {verdict}"
        )
    front = f"Pareto front: {result.export.front_size} points within {args.budget_ms:g} ms"
    print(f"{result.outcome.finished} trials in {result.run_dir}; {front}")
    if result.verification is not None:
        tau = result.verification.kendall_tau
        shown = "n/a" if tau is None else f"{tau:.2f}"
        print(f"verification: Kendall tau {shown} (proxy vs verified) over {len(result.verification.models)} models")
    print(f"see {result.run_dir / 'summary.md'} and {result.run_dir / 'pareto.png'}")
    return EXIT_OK


def _print_line(progress: Any) -> None:
    print(progress.line(), flush=True)


def _cmd_verify(args: argparse.Namespace) -> None:
    from mvit_nas.report.summary import verify_section

    report = verify_run(
        args.run_dir,
        args.epochs,
        top=args.top,
        seeds=args.seeds,
        workers=args.workers,
        address=args.address,
        gpus_per_trial=args.gpus_per_trial,
        progress=_print_line,
    )
    print("\n".join(verify_section(report)))
    print(f"(summary.md gets this section at the next `mvit-nas export --run-dir {args.run_dir}`)")


def _cmd_export(args: argparse.Namespace) -> None:
    from mvit_nas.report import export_run

    formats = tuple(args.format or ("yaml",))
    result = export_run(args.run_dir, out_dir=args.out, formats=formats, untrained=args.untrained)
    for path in result.paths:
        print(path)


def _cmd_train(args: argparse.Namespace) -> None:
    result, out = train_run(
        args.config,
        args.dataset,
        args.epochs,
        args.resolution,
        init=args.init,
        seed=args.seed,
        out=args.out,
        device=args.device,
        threads=args.threads,
    )
    print(f"top-1 accuracy {result.accuracy:.4f} after {result.epochs} epochs; checkpoints in {out}")


def _add_search_parser(commands: Any) -> None:
    search = commands.add_parser("search", help="search the accuracy-latency Pareto front under a latency budget")
    search.add_argument("--budget-ms", type=float, required=True, help="latency budget per image batch, in ms")
    search.add_argument("--space", help="search space YAML (default: the bundled mobilevit_v1.yaml)")
    search.add_argument(
        "--trials",
        type=_positive_int,
        default=DEFAULT_TRIALS,
        help=f"finished trials to reach (default: {DEFAULT_TRIALS})",
    )
    search.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    search.add_argument(
        "--trial-timeout",
        type=float,
        help="fail a trial not finished this many seconds after it was submitted (worker start and retry included)",
    )
    _add_device_args(search, threads_default=f"{SEARCH_THREADS}: workers share the cores")
    search.add_argument("--dataset", default=_SEARCH["dataset"], help=f"{DATASETS} (default: {_SEARCH['dataset']})")
    search.add_argument("--proxy", default=_PROXY["kind"], help=f"{' | '.join(PROXIES)} (default: {_PROXY['kind']})")
    search.add_argument("--epochs", type=float, help="proxy training epochs (default: the proxy's own)")
    search.add_argument(
        "--proxy-scale",
        type=float,
        default=_PROXY["scale"],
        help=f"the proxy scores each architecture at this fraction of its resolution (default: {_PROXY['scale']})",
    )
    search.add_argument(
        "--sampler", default=_SEARCH["sampler"], help=f"{' | '.join(SAMPLERS)} (default: {_SEARCH['sampler']})"
    )
    search.add_argument(
        "--latency",
        default=_SEARCH["latency_source"],
        choices=LATENCY_SOURCES,
        help="measure each trial, or predict from `mvit-nas latency-table build` (front measured at the end)",
    )
    search.add_argument(
        "--fidelity",
        default=_FIDELITY["kind"],
        help="single: every architecture gets the proxy; halving: successive halving trains the promising "
        f"ones longer, eta x per rung ({' | '.join(FIDELITIES)}; default: {_FIDELITY['kind']})",
    )
    search.add_argument(
        "--eta",
        type=int,
        default=_FIDELITY["eta"],
        help=f"halving: 1/eta go on to each next rung (default: {_FIDELITY['eta']})",
    )
    search.add_argument(
        "--max-budget-epochs",
        type=float,
        help=f"halving: the last rung's epochs (default: {EPOCHS_FACTOR} x the proxy's, the verification budget)",
    )
    search.add_argument("--seed", type=int, default=_SEARCH["seed"])
    search.add_argument(
        "--run-dir", help="run folder; the same folder resumes (default: results/search-<budget>ms-seed<seed>)"
    )
    _add_cluster_args(search, "trial", DEFAULT_WORKERS, _RUN["gpus_per_trial"])
    search.add_argument(
        "--verify-epochs",
        type=float,
        default=_RUN["verify_epochs"],
        help="after the search, train the front and the fitted seeds this many epochs (see `mvit-nas verify`)",
    )
    search.set_defaults(run=_cmd_search)


def _add_verify_parser(commands: Any) -> None:
    verify = commands.add_parser(
        "verify", help="train the front and the fitted seeds longer, to check the proxy's ranking (resumable)"
    )
    verify.add_argument("--run-dir", required=True, help="a search's run folder")
    verify.add_argument(
        "--epochs",
        type=float,
        default=_VERIFY["epochs"],
        help=f"training epochs (default: {EPOCHS_FACTOR}x the run's proxy epochs)",
    )
    verify.add_argument("--top", type=_positive_int, help="only the front points with the best proxy accuracy")
    verify.add_argument(
        "--seeds", type=_positive_int, default=_VERIFY["seeds"], help=f"training seeds (default: {_VERIFY['seeds']})"
    )
    _add_cluster_args(verify, "job", _VERIFY["workers"], _VERIFY["gpus_per_trial"])
    verify.set_defaults(run=_cmd_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mvit-nas", description="Hardware-aware architecture search for MobileViT.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    space = commands.add_parser("space", help="describe a search space: size, choices, seeds inside")
    space.add_argument("--space", help="space YAML file (default: the bundled mobilevit_v1.yaml)")
    space.add_argument("--json", action="store_true", help="print one JSON object")
    space.set_defaults(run=_cmd_space)

    profile = commands.add_parser("profile", help="parameters, multiply-adds, latency and memory of one model")
    which = profile.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", choices=PRESETS, help="a published MobileViT")
    which.add_argument("--config", help="an ArchConfig YAML or JSON file (e.g. exported by a search)")
    profile.add_argument("--resolution", type=_positive_int, help="input size in px (default: the config's)")
    profile.add_argument("--batch-size", type=_positive_int, default=1)
    _add_device_args(profile)
    profile.add_argument("--json", action="store_true", help="print one JSON object")
    profile.add_argument(
        "--predict", action="store_true", help="also predict the latency from this device's latency table"
    )
    profile.set_defaults(run=_cmd_profile)

    latency_table = commands.add_parser("latency-table", help="per-device latency predictor tables")
    table_commands = latency_table.add_subparsers(dest="table_command", required=True, parser_class=_Parser)
    build = table_commands.add_parser("build", help="measure building blocks here and fit the predictor")
    _add_device_args(build, threads_default=f"{SEARCH_THREADS}, as a search measures")
    build.add_argument("--batch-size", type=_positive_int, default=1)
    build.add_argument("--space", help="search space YAML whose blocks to measure (default: the bundled one)")
    build.add_argument("--out", help="table file (default: results/latency_tables/<device>-<backend>-<threads>t.json)")
    build.set_defaults(run=_cmd_latency_table_build)

    _add_search_parser(commands)
    _add_verify_parser(commands)

    export = commands.add_parser("export", help="write the run's tables, plot, summary and front configs/models")
    export.add_argument("--run-dir", required=True)
    export.add_argument(
        "--format", action="append", default=None, help="yaml | json | onnx | timm (repeatable; default: yaml)"
    )
    export.add_argument("--out", help="output folder (default: the run folder)")
    export.add_argument(
        "--untrained",
        action="store_true",
        help="export front models that have no trained weights freshly initialised (labelled so) instead of failing",
    )
    export.set_defaults(run=_cmd_export)

    train = commands.add_parser("train", help="train one config (e.g. a front point) for as long as you like")
    train.add_argument("--config", required=True, help="an ArchConfig YAML or JSON file")
    train.add_argument("--dataset", default=_TRAIN["dataset"], help=f"{DATASETS} (default: {_TRAIN['dataset']})")
    train.add_argument("--epochs", type=_positive_int, default=_TRAIN["epochs"])
    train.add_argument(
        "--resolution", type=_positive_int, default=_TRAIN["resolution"], help="training resolution in px"
    )
    train.add_argument(
        "--init", help="initial weights in timm's mobilevit layout: .pth, .safetensors or a checkpoint holding one"
    )
    train.add_argument("--seed", type=int, default=_TRAIN["seed"])
    train.add_argument("--device", default=_TRAIN["device"], help="auto | cpu | cuda (default: auto)")
    train.add_argument("--threads", type=_positive_int, help="CPU threads (default: all cores)")
    train.add_argument("--out", help="checkpoint folder; the same folder resumes (default: results/train/<config>)")
    train.set_defaults(run=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
    except InputError as error:
        print(f"mvit-nas {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"mvit-nas {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("MVIT_NAS_DEBUG"):
            raise
        print(
            f"mvit-nas {args.command}: internal error: {type(error).__name__}: {error} "
            "(set MVIT_NAS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return EXIT_OK if status is None else status


if __name__ == "__main__":
    sys.exit(main())
