"""``build_pairs``: run the chosen sources and write one pairs build (what `diffembed data pairs` does)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from diffembed.errors import InputError
from diffembed.training.data import apt_descriptions, man_pages, rst_sections
from diffembed.training.data.reserved import refuse_reserved
from diffembed.training.data.pairs import BuildResult, Limits, check_out_dir, select_pairs, write_pairs

SOURCES = ("apt", "python-doc", "linux-doc", "man")


def build_pairs(out: str | Path, sources: list[str] | tuple[str, ...] = SOURCES, *, limits: Limits | None = None,
                dev_fraction: float = 0.02, max_per_source: int | None = None, page_negatives: int = 0,
                apt_lists: Path | None = None, python_doc: Path | None = None, linux_doc: Path | None = None,
                man_dirs: list[Path] | None = None, man_packages: tuple[str, ...] = man_pages.DEFAULT_PACKAGES,
                progress: bool | None = None) -> BuildResult:
    """Sources run in the fixed order of SOURCES whatever order they were asked in, so the output
    (which source keeps a text that two sources share) does not depend on the command line."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise InputError(f"unknown source '{unknown[0]}'; choose from {', '.join(SOURCES)}")
    if not sources:
        raise InputError("no source chosen")
    if page_negatives < 0:
        raise InputError("--page-negatives must be 0 or more")
    limits = limits or Limits()
    out = Path(out)
    check_out_dir(out)  # before minutes of parsing
    apt_lists = Path(apt_lists) if apt_lists else apt_descriptions.DEFAULT_LISTS
    python_doc = Path(python_doc) if python_doc else rst_sections.PYTHON_DOC
    linux_doc = Path(linux_doc) if linux_doc else rst_sections.LINUX_DOC
    # every source is checked before any is parsed: a missing one fails in a second, not after minutes
    if "apt" in sources:
        refuse_reserved(apt_lists, "--apt-lists")
        apt_descriptions.find_lists(apt_lists)
    if "python-doc" in sources:
        rst_sections.check_root(python_doc, "python-doc", python_doc=True)
    if "linux-doc" in sources:
        rst_sections.check_root(linux_doc, "linux-doc")
    if "man" in sources:
        for d in man_dirs or []:
            refuse_reserved(d, "--man-dir")
            man_pages.dir_pages(Path(d))
        if not man_dirs:
            man_pages.package_pages(tuple(man_packages))
    makers = {
        "apt": lambda c: apt_descriptions.apt_pairs(c, apt_lists, progress=progress),
        "python-doc": lambda c: rst_sections.rst_pairs(c, python_doc, source="python-doc", python_doc=True,
                                                       page_negatives=page_negatives, progress=progress),
        "linux-doc": lambda c: rst_sections.rst_pairs(c, linux_doc, source="linux-doc",
                                                      page_negatives=page_negatives, progress=progress),
        "man": partial(man_pages.man_pairs, dirs=man_dirs, packages=tuple(man_packages), progress=progress),
    }
    chosen = {name: makers[name] for name in SOURCES if name in sources}
    pairs, counts = select_pairs(chosen, limits, dev_fraction=dev_fraction, max_per_source=max_per_source)
    settings = {
        "sources": list(chosen), "dev_fraction": dev_fraction, "max_per_source": max_per_source,
        "page_negatives": page_negatives, "min_query_chars": limits.min_query_chars,
        "max_query_chars": limits.max_query_chars, "min_positive_chars": limits.min_positive_chars,
        "max_positive_chars": limits.max_positive_chars,
        "inputs": {name: str(path) for name, path in (("apt", apt_lists), ("python-doc", python_doc),
                                                     ("linux-doc", linux_doc)) if name in chosen},
    }
    if "man" in chosen:
        settings["inputs"]["man"] = [str(d) for d in man_dirs] if man_dirs else [f"package {p}" for p in man_packages]
    return write_pairs(out, pairs, counts, settings, dev_fraction)
