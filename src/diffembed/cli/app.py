"""The `diffembed` command. Commands import heavy libraries lazily so `--help` stays instant."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from diffembed.cli.bulk import bulk_embed
from diffembed.cli.common import err_console
from diffembed.cli.convert import convert_gguf_command
from diffembed.cli.data import data_app
from diffembed.cli.demo import demo
from diffembed.cli.encode import encode
from diffembed.cli.eval import eval_command
from diffembed.cli.index import index_app, search
from diffembed.cli.info import info
from diffembed.cli.merge import merge
from diffembed.cli.mine import mine
from diffembed.cli.models import models
from diffembed.cli.pretrain import pretrain
from diffembed.cli.serve import serve
from diffembed.cli.train import train
from diffembed.errors import DiffembedError

app = typer.Typer(
    name="diffembed",
    help="Diffusion-pretrained dense and contextual text embeddings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(encode)
app.command()(info)
app.command()(models)
app.command()(demo)
app.command(name="bulk-embed")(bulk_embed)
app.command()(serve)
app.command(name="eval")(eval_command)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(pretrain)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train)
app.command(name="convert-gguf")(convert_gguf_command)
app.command()(merge)
app.command()(mine)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.command()(search)


def main() -> None:
    try:
        app()
    except DiffembedError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)  # "[index]" is text
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
