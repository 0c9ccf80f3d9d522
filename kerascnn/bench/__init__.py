"""`kerascnn bench NAME`: benchmarks that compare kerascnn with its reference in one run.

Each benchmark module registers itself with `@register_bench(name)`: a function taking the parsed
CLI arguments and returning a flat dict of results (printed as text, or as JSON with --json), and
an `add_arguments(parser)` function for its own flags. Results are ratios against a reference
measured in the same process, because absolute times on a shared machine are noisy.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

BENCH_MODULES = ("kerascnn.bench.augment", "kerascnn.bench.predict", "kerascnn.bench.serve", "kerascnn.bench.train",
                 "kerascnn.bench.transfer", "kerascnn.bench.imbalance",
                 "kerascnn.bench.audit", "kerascnn.bench.cache")  # imported lazily by the CLI


@dataclasses.dataclass(frozen=True)
class Bench:
    """One benchmark: its CLI help, its argument adder and the function that runs it."""

    help: str
    add_arguments: Callable
    run: Callable


BENCHES: dict[str, Bench] = {}


def register_bench(name: str, help: str, add_arguments: Callable):
    """Decorator: make `run(args) -> dict` available as `kerascnn bench NAME`."""

    def decorate(run: Callable) -> Callable:
        BENCHES[name] = Bench(help, add_arguments, run)
        return run

    return decorate


def load_benches() -> dict[str, Bench]:
    import importlib

    for module in BENCH_MODULES:
        importlib.import_module(module)
    return BENCHES
