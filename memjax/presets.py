"""The studies' presets as markdown tables, written into docs/studies.md from the presets
themselves so that the docs cannot drift from the code.

```bash
python -m memjax.presets            # rewrite the tables in docs/studies.md
python -m memjax.presets --check    # exit 1 if they differ from the presets
```

Each table sits between `<!-- presets: NAME -->` and `<!-- /presets -->` in the document,
one column per preset (smoke / cpu / paper), one row per setting as `--set` names it: the
data (its sizes as `memjax.data.data_shape` gives them) and the model always, the members
(`seeds` where the study has them, else `train.members`), epochs, batch size and learning
rate always, and every other setting where the presets differ.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from memjax.config import DataConfig, ModelConfig
from memjax.errors import MemjaxError

BLOCK = re.compile(r"(<!-- presets: (?P<name>[\w-]+) -->\n)(?P<table>.*?)(<!-- /presets -->)",
                   re.S)
ALWAYS = ("train.epochs", "train.batch_size", "train.learning_rate")
DOCS = Path("docs") / "studies.md"
COMMAND = "python -m memjax.presets"


def describe_data(config: DataConfig) -> str:
    from memjax.data import data_shape

    shape = data_shape(config)
    text = f"{config.name}: {shape.train:,} train, {shape.validation:,} validation"
    if config.test_as_validation:
        text += " (the official test split)"
    if config.downscale != 1:
        text += f", {shape.image_shape[0]}x{shape.image_shape[1]} (downscale {config.downscale})"
    return text


def describe_model(config: ModelConfig) -> str:
    normalized = ", inputs normalized" if config.input_mean or config.input_std else ""
    if config.kind in ("resnet9", "resnet18"):
        return f"ResNet-{config.kind[6:]}, width {config.width or 64}" + normalized
    if config.kind in ("cnn", "paper-cnn"):
        text = f"the paper's CNN, {config.conv_channels} channels"
    elif config.kind == "mlp":
        text = f"{config.kind.upper()} " + ("-".join(map(str, config.hidden)) or "(linear)")
    else:
        return config.kind + normalized
    return text + (", BatchNorm" if config.batchnorm else "") + normalized


def _value(value) -> str:
    if isinstance(value, tuple):
        return ", ".join(map(_value, value)) if value else "()"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _settings(config, prefix: str = "") -> dict[str, tuple[str, bool]]:
    """{`--set` key: (shown value, whether it is data or a model)} of every setting; a
    data or model config is one row."""
    out = {}
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), prefix + f.name
        if isinstance(value, DataConfig):
            out[key] = describe_data(value), True
        elif isinstance(value, ModelConfig):
            out[key] = describe_model(value), True
        elif dataclasses.is_dataclass(value):
            out.update(_settings(value, key + "."))
        else:
            out[key] = _value(value), False
    return out


def table(presets: dict) -> str:
    """The markdown table of {preset name: config} (see the module docstring)."""
    settings = [_settings(config) for config in presets.values()]
    always = ALWAYS + (("seeds",) if "seeds" in settings[0] else ("train.members",))
    lines = ["| setting | " + " | ".join(presets) + " |",
             "| --- |" + " --- |" * len(presets)]
    for key, (value, what) in settings[0].items():
        if what or key in always or any(s[key][0] != value for s in settings):
            lines.append(f"| `{key}` | " + " | ".join(s[key][0].replace("|", "\\|")
                                                      for s in settings) + " |")
    return "\n".join(lines) + "\n"


def studies() -> dict:
    """{study name: its module}, every registered study."""
    from memjax.studies import registered

    return registered()


def render(text: str) -> str:
    """`text` with every presets block rewritten from its study's PRESETS."""
    modules = studies()

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in modules:
            raise MemjaxError(f"{DOCS}: presets block of unknown study {name!r}; known: "
                              f"{', '.join(modules)}")
        return match[1] + table(modules[name].PRESETS) + match[4]

    return BLOCK.sub(replace, text)


def missing(text: str) -> list[str]:
    """The registered studies without a presets block in `text`."""
    return [n for n in studies() if n not in {m["name"] for m in BLOCK.finditer(text)}]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", default=str(DOCS), help=f"default: {DOCS}")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if the tables differ from the presets")
    args = p.parse_args(argv)
    path = Path(args.path)
    if not path.is_file():
        print(f"{COMMAND}: no {path} here (run it from the repository's root, or name the "
              f"file)", file=sys.stderr)
        return 2
    text = path.read_text()
    absent = missing(text)
    if absent:
        print(f"{path}: no presets block for {', '.join(absent)} (add "
              f"'<!-- presets: NAME -->' and '<!-- /presets -->' lines)", file=sys.stderr)
        return 1
    rendered = render(text)
    if rendered == text:
        return 0
    if args.check:
        print(f"{path}: its preset tables differ from the presets; run `{COMMAND}`",
              file=sys.stderr)
        return 1
    path.write_text(rendered)
    print(f"{path}: preset tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
