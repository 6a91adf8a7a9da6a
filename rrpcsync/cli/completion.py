"""`rrpcsync completion bash|zsh|fish`: the shell completion script (click's own)."""

from __future__ import annotations

import click

from rrpcsync.cli.app import cli, examples, out

COMPLETE_VAR = "_RRPCSYNC_COMPLETE"  # click completes when the shell sets it


@cli.command(
    epilog=examples(
        "rrpcsync completion bash > ~/.local/share/bash-completion/completions/rrpcsync",
        "rrpcsync completion zsh > ~/.zfunc/_rrpcsync   # fpath+=~/.zfunc; compinit",
        "rrpcsync completion fish > ~/.config/fish/completions/rrpcsync.fish",
        'eval "$(rrpcsync completion bash)"            # this shell only',
    )
)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish (commands, options, choices)."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the three shells click ships
    root = ctx.find_root().command
    out(completer(root, {}, "rrpcsync", COMPLETE_VAR).source().rstrip("\n"))
