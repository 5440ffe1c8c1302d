"""The ``e3traj`` command line: a click group whose commands load on demand.

Each command group lives in its own module. Commands that need an optional extra (``train``: torch, e3nn,
onnx; ``plot``: matplotlib) are only imported after the extra is found, so a host with the base package
lists them in ``--help`` and gets a one-line hint, exit code 2, when it calls one.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import signal
import sys
import threading
import warnings

import click

from .._errors import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    E3TrajError,
    MissingExtra,
    first_line,
    one_line,
)
from .._version import __version__
from ._evaluate import DATA_HELP, make_evaluate  # for train/cli.py: the shared --data help and evaluate command

__all__ = ["main", "COMMANDS", "EXTRAS", "DATA_HELP", "make_evaluate"]

#: name -> (module, attribute, extra or None, one-line help shown by ``e3traj --help``)
COMMANDS: dict[str, tuple[str, str, str | None, str]] = {
    "simulate": (
        "e3traj.runtime.cli._data",
        "simulate",
        None,
        "Simulate a bead-spring polymer trajectory (12 beads; --beads N).",
    ),
    "train": ("e3traj.train.cli", "train", "train", "Train a model of one kind (--model); writes a checkpoint."),
    "evaluate": ("e3traj.train.cli", "evaluate", "train", "Score a bundle or checkpoint against the predictor suite."),
    "export": ("e3traj.export.cli", "export", "train", "Export a checkpoint to a verified ONNX bundle."),
    "pack": ("e3traj.runtime.cli._host", "pack", None, "Pack a bundle directory into one .tar.gz for shipping."),
    "inspect": ("e3traj.runtime.cli._host", "inspect", None, "Show a bundle's manifest and verify its hashes."),
    "rollout": ("e3traj.runtime.cli._rollout", "rollout", None, "Extrapolate trajectories with a bundle."),
    "merge": ("e3traj.runtime.cli._merge", "merge", None, "Merge the shards of one 'rollout --shard' run."),
    "recover": (
        "e3traj.runtime.cli._rollout",
        "recover",
        None,
        "Write the frames a killed rollout left in OUT.partial (incomplete).",
    ),
    "check": ("e3traj.runtime.cli._host", "check", None, "Check a bundle's equivariance and example outputs."),
    "fidelity": (
        "e3traj.runtime.cli._fidelity",
        "fidelity",
        None,
        "Long rollouts judged by stability and distributions, beside the predictor suite.",
    ),
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
        """Run the command; every failure leaves as one escaped line on stderr and a documented exit code."""
        restore = _catch_sigterm()
        try:
            with warnings.catch_warnings():
                # numpy's floating-point RuntimeWarnings would add lines to stderr; the outcome is said in one line
                warnings.simplefilter("ignore", RuntimeWarning)
                return super().invoke(ctx)
        except E3TrajError as exc:
            raise _error(str(exc), exc.exit_code) from None
        except click.UsageError as exc:  # click's own parsing errors: one line instead of usage + hint + error
            cmd = exc.ctx.command_path if exc.ctx is not None else "e3traj"
            raise _error(f"{exc.format_message()} (see '{cmd} --help')", EXIT_USAGE) from None
        except click.ClickException as exc:
            raise _error(exc.format_message(), exc.exit_code) from None
        except _Terminated:
            raise _error("terminated (SIGTERM); temporary files were removed, no unfinished output was kept",
                         EXIT_TERMINATED) from None  # fmt: skip
        except KeyboardInterrupt:
            raise _error("interrupted; temporary files were removed, no unfinished output was kept",
                         EXIT_INTERRUPTED) from None  # fmt: skip
        except OSError as exc:
            raise _error(_os_message(exc), EXIT_INPUT) from None
        except MemoryError:
            raise _error("out of memory; ask for fewer frames, steps, starts or a smaller batch", EXIT_USAGE) from None
        except RecursionError:
            raise _error("input nested too deeply to read; check the file you passed", EXIT_INPUT) from None
        except (click.exceptions.Exit, click.exceptions.Abort):  # --help, ctx.exit(): click's own control flow
            raise
        except Exception as exc:  # a bug of ours: one line and exit 1, the traceback with E3TRAJ_DEBUG=1
            if os.environ.get("E3TRAJ_DEBUG"):
                raise
            raise _error(
                f"internal error ({type(exc).__name__}: {first_line(exc)}); this is a bug of e3traj, "
                "please report it with the output of the same command under E3TRAJ_DEBUG=1",
                EXIT_INTERNAL,
            ) from None
        finally:
            restore()


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that every ``finally`` and ``except BaseException`` cleans up."""


def _catch_sigterm():
    """Turn SIGTERM into :class:`_Terminated` while a command runs (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        return lambda: None
    if previous is None:  # installed from C: nothing Python can put back
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


class _OneLineError(click.ClickException):
    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


def _error(message: str, code: int) -> click.ClickException:
    err = _OneLineError(one_line(message))
    err.exit_code = code
    return err


_OS_HINTS = {
    errno.ENOSPC: "free disk space or write somewhere else",
    errno.EDQUOT: "free disk space or write somewhere else",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "pass a file, not a folder",
}


def _os_message(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or type(exc).__name__
    return f"{name}: {what}; {_OS_HINTS.get(exc.errno, 'check the path and try again')}"


def _missing_extra_command(name: str, extra: str, short: str) -> click.Command:
    @click.command(name=name, help=short, context_settings={"ignore_unknown_options": True, "help_option_names": []})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def _cmd(args):
        _require_extra(extra, name)

    return _cmd


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="e3traj")
def main():
    """e3traj: train E(3)-equivariant models of bead-spring polymer trajectories (any number of beads), export
    them as ONNX bundles, and run them on hosts without PyTorch.

    Exit codes: 0 success, 2 bad usage (or a missing extra, or a size over a cap), 3 bad input (or a file that
    cannot be read or written), 4 a check failed, 5 a rollout stopped early, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM); 1 is an internal error (a bug: E3TRAJ_DEBUG=1 shows its traceback).
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
