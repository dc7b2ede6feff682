"""Data sources checked beside the formats registry (`mmrl.cli.checks` runs this with `mmrl.config`'s own
checks): one `key: …` line per problem, every format first, then each source's shape and template."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmrl.datasets.formats import FORMATS
from mmrl.datasets.sample import check_template
from mmrl.registry import UnknownNameError

if TYPE_CHECKING:
    from mmrl.config import DataSource


def check_sources(sources: list[tuple[str, DataSource]]) -> list[str]:
    """`sources`: (key, source) pairs (`mmrl.config.data_sources`). A format other than `auto` must be registered;
    a source names exactly one of `task` (synthetic) or `path` (a data file); a template must hold `{problem}`."""
    errors = []
    for key, src in sources:
        if src.format != "auto":
            try:
                FORMATS.get(src.format)
            except UnknownNameError as e:
                errors.append(f"{key}.format: {e}")
    for key, src in sources:
        if (src.task is None) == (src.path is None):
            errors.append(f"{key}: set exactly one of `task` (synthetic) or `path` (a data file)")
        if src.template is not None:
            try:
                check_template(src.template)
            except ValueError as e:
                errors.append(f"{key}.template: {e}")
    return errors
