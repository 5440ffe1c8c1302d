"""The ``e3traj`` command line: a click group whose commands load on demand.

Each command group lives in its own module. Commands that need an optional extra (``train``: torch, e3nn,
onnx; ``plot``: matplotlib) are only imported after the extra is found, so a host with the base package
lists them in ``--help`` and gets a one-line hint, exit code 2, when it calls one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from .._errors import E3TrajError, MissingExtra
from .._version import __version__

__all__ = ["main", "COMMANDS", "EXTRAS"]

#: name -> (module, attribute, extra or None, one-line help shown by ``e3traj --help``)
COMMANDS: dict[str, tuple[str, str, str | None, str]] = {
    "simulate": ("e3traj.runtime.cli._data", "simulate", None, "Simulate a 12-bead bead-spring polymer trajectory."),
    "train": ("e3traj.train.cli", "train", "train", "Train the baseline or the e3nn model; writes a checkpoint."),
    "evaluate": ("e3traj.train.cli", "evaluate", "train", "Score a bundle or checkpoint against trivial predictors."),
    "export": ("e3traj.export.cli", "export", "train", "Export a checkpoint to a verified ONNX bundle."),
    "pack": ("e3traj.runtime.cli._host", "pack", None, "Pack a bundle directory into one .tar.gz for shipping."),
    "inspect": ("e3traj.runtime.cli._host", "inspect", None, "Show a bundle's manifest and verify its hashes."),
    "rollout": ("e3traj.runtime.cli._host", "rollout", None, "Extrapolate trajectories with a bundle."),
    "check": ("e3traj.runtime.cli._host", "check", None, "Check a bundle's equivariance and example outputs."),
    "bench": ("e3traj.runtime.cli._bench", "bench", None, "Measure a bundle's throughput and latency on this CPU."),
    "plot": ("e3traj.runtime.cli._plot", "plot", "plot", "Draw the chapter's figures (needs the plot extra)."),
}

#: commands that fall back to a base-install version when their extra is missing (evaluate: bundles only)
FALLBACKS: dict[str, tuple[str, str]] = {"evaluate": ("e3traj.runtime.cli._evaluate", "evaluate")}

#: extra -> (modules that must be importable, install hint)
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("torch", "e3nn", "onnx"), "pip install 'e3traj[train]'"),
    "plot": (("matplotlib",), "pip install 'e3traj[plot]'"),
}


def _installed(module: str) -> bool:
    """True if ``module`` can be found (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _require_extra(extra: str, command: str) -> None:
    modules, hint = EXTRAS[extra]
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise MissingExtra(f"'e3traj {command}' needs the {extra} extra ({', '.join(missing)} not installed): {hint}")


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        if name not in COMMANDS:
            return None
        module, attr, extra, short = COMMANDS[name]
        if extra is not None and not all(_installed(m) for m in EXTRAS[extra][0]):
            if name in FALLBACKS:
                module, attr = FALLBACKS[name]
                return getattr(importlib.import_module(module), attr)
            return _missing_extra_command(name, extra, short)
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [
            (name, COMMANDS[name][3] if name in COMMANDS else self.commands[name].get_short_help_str())
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except E3TrajError as exc:
            err = click.ClickException(str(exc))
            err.exit_code = exc.exit_code
            raise err from None


def _missing_extra_command(name: str, extra: str, short: str) -> click.Command:
    @click.command(name=name, help=short, context_settings={"ignore_unknown_options": True, "help_option_names": []})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args):
        _require_extra(extra, name)

    return _cmd


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="e3traj")
def main():
    """e3traj: train E(3)-equivariant models of 12-bead polymer trajectories, export them as ONNX bundles,
    and run them on hosts without PyTorch.

    Exit codes: 0 success, 2 bad usage (or a missing extra), 3 bad input, 4 a check failed,
    5 a rollout stopped early.
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
