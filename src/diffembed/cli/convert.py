"""`diffembed convert-gguf`: turn a GGUF decoder into a float32 transformers folder, once."""

from __future__ import annotations

from pathlib import Path

import typer

from diffembed.cli.common import err_console


def _is_alias(source: str) -> bool:
    from diffembed.modeling.gguf_import import PACKAGED_GGUF

    return source in PACKAGED_GGUF and not Path(source).is_file()


def _looks_like_file(source: str) -> bool:
    return Path(source).expanduser().exists() or source.endswith(".gguf") or "/" in source


def _convert_alias(alias: str, out: Path | None) -> Path:
    from diffembed.modeling.gguf_import import cache_root, convert_gguf, is_converted, packaged_gguf_path, packaged_model_path

    if out is not None:
        return convert_gguf(packaged_gguf_path(alias), out)
    if is_converted(cache_root() / "models" / alias):
        err_console.print(f"{alias} is already converted", highlight=False)
    return packaged_model_path(alias)


def _convert_file(source: str, out: Path | None) -> Path:
    from diffembed.errors import InputError
    from diffembed.modeling.gguf_import import check_gguf_file, convert_gguf

    gguf = check_gguf_file(source)
    if out is None:
        raise InputError(f"--out is required to convert {gguf}; only packaged models have a cache folder")
    return convert_gguf(gguf, out)


def convert_gguf_command(
    source: str = typer.Argument("smollm2-135m", help="A .gguf file, or a packaged model: smollm2-135m."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default for a packaged model: the diffembed cache)."),
) -> None:
    """Dequantize a GGUF decoder into a float32 safetensors folder with its tokenizer; print its path.

    The folder loads offline like any other model (`--model FOLDER`); a packaged model also loads by
    its name, which converts it on first use.
    """
    from diffembed.errors import InputError
    from diffembed.modeling.gguf_import import PACKAGED_GGUF

    if _is_alias(source):
        folder = _convert_alias(source, out)
    elif _looks_like_file(source):
        folder = _convert_file(source, out)
    else:
        raise InputError(f"'{source}' is neither a .gguf file nor a packaged model; packaged: {', '.join(sorted(PACKAGED_GGUF))}")
    typer.echo(str(folder))
