"""The ``vitok`` command: a click group whose subcommands live in their own modules and load lazily."""
from __future__ import annotations

import importlib
import os
import re
import signal
import sys
import warnings

import click

# name -> "module:attribute"; each module holds one click command or group (thin: parse, call the library, print).
COMMANDS: dict[str, str] = {
    "demo": "vitok.cli.demo:demo",
    "encode": "vitok.cli.codec_cmds:encode",
    "decode": "vitok.cli.codec_cmds:decode",
    "info": "vitok.cli.codec_cmds:info",
    "compare": "vitok.cli.compare:compare",
    "calibrate": "vitok.cli.calibrate:calibrate",
    "models": "vitok.cli.models:models",
    "rd": "vitok.cli.rd:rd",
    "bench": "vitok.cli.bench:bench",
    "train": "vitok.cli.train:train",
    "latents": "vitok.cli.latents:latents",
    "gen": "vitok.cli.gen:gen",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when they run, so ``vitok --help`` stays fast."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in self.lazy_commands.items() if _available(target))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self.lazy_commands.get(name)
        if target is None or not _available(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


def _available(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vitok")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="vitok")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """vitok: visual tokenizers and codecs. Encode and decode video, inspect .vtok files, measure rate-distortion."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def one_line_warnings() -> None:
    """Show warnings as one line ``warning: ...`` on stderr, without the source file and line (``--debug`` keeps
    Python's default format)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        click.echo(f"warning: {message}", err=True)

    warnings.showwarning = show


def _sigterm_as_interrupt(main_pid: int):
    """A SIGTERM handler (``kill``, a scheduler's or torchrun's stop) that raises KeyboardInterrupt as Ctrl-C does,
    so partial outputs are removed and the command ends with ``error: aborted``; a forked worker (data loader,
    process pool) dies of it as it would have."""
    def handle(signum, frame) -> None:
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    return handle


def _debug_asked(args: list[str]) -> bool:
    """Whether ``--debug`` comes before the subcommand (the group's option; after it, it is a bad option)."""
    for arg in args:
        if arg == "--debug":
            return True
        if not arg.startswith("-"):
            return False
    return False


def out_of_memory(e: BaseException) -> str | None:
    """What ran out, when ``e`` says memory did (Python's MemoryError, torch's CPU allocator or CUDA): an oversized
    ``--size`` or batch is the user's to fix, so it gets one line, not a traceback; None for any other error."""
    text = " ".join(str(e).split())
    if isinstance(e, MemoryError):
        return text or "MemoryError"
    if not isinstance(e, RuntimeError) or not ("can't allocate memory" in text or "out of memory" in text):
        return None
    tried = re.search(r"tried to allocate ([\d.]+ ?\w+)", text, re.IGNORECASE)
    return f"tried to allocate {tried.group(1)}" if tried else text[:200]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line ``error: ...`` and exit non-zero, no traceback."""
    from vitok.cli.common import torchrun_rank
    from vitok.data.errors import VitokError

    args = sys.argv[1:] if argv is None else argv
    debug = _debug_asked(args) or os.environ.get("VITOK_DEBUG") == "1"
    if not debug:
        one_line_warnings()
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt(os.getpid()))   # `vitok train`: its own way
    try:
        rv = cli.main(args=args, prog_name="vitok", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as e:   # `vitok`, `vitok bench`: the help, as laid out
        click.echo(e.ctx.get_help(), err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:   # bad options and arguments too: one line, like every user error
        if debug:
            raise
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if isinstance(e, click.UsageError) and ctx else ""
        if isinstance(e, click.NoSuchOption) and e.option_name == "--debug":
            hint = " (it goes before the command: vitok --debug ...)"
        click.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
        sys.exit(e.exit_code)
    except VitokError as e:
        if debug:
            raise
        if not (getattr(e, "all_ranks", False) and torchrun_rank() != 0):  # one line per torchrun job
            click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # a missing, unwritable or full path: the user's to fix
        if debug:
            raise
        click.echo(f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), err=True)
        sys.exit(1)
    except (MemoryError, RuntimeError) as e:
        reason = out_of_memory(e)
        if debug or reason is None:
            raise
        click.echo(f"error: out of memory ({reason})", err=True)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
