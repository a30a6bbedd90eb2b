"""docs/studies.md's preset tables are the presets (memjax.presets): regenerated here, they
must equal the committed docs."""
import dataclasses
from pathlib import Path

from memjax import presets
from memjax.config import DataConfig, ModelConfig, TrainConfig
from memjax.experiments import cscore
from memjax.studies import registered

DOCS = Path(__file__).resolve().parents[1] / "docs" / "studies.md"


def test_docs_preset_tables_are_the_presets():
    text = DOCS.read_text()
    assert not presets.missing(text), (
        f"docs/studies.md has no presets table for {', '.join(presets.missing(text))}: add "
        f"'<!-- presets: NAME -->' and '<!-- /presets -->' lines, then run "
        f"`{presets.COMMAND}`")
    assert presets.render(text) == text, (
        f"docs/studies.md's preset tables differ from the studies' PRESETS: run "
        f"`{presets.COMMAND}` and commit docs/studies.md")
    assert set(registered()) == {m["name"] for m in presets.BLOCK.finditer(text)}


def test_a_table_shows_what_differs_and_always_the_data_model_and_members():
    @dataclasses.dataclass(frozen=True)
    class Config:
        data: DataConfig = DataConfig()
        model: ModelConfig = ModelConfig(hidden=(64, 32))
        train: TrainConfig = TrainConfig(members=8, epochs=3)
        widths: tuple = (8, 16)
        same: float = 0.5

    small = Config(data=DataConfig(train_size=100, downscale=2),
                   train=TrainConfig(members=2, epochs=3, momentum=0.9), widths=())
    cnn = Config(data=DataConfig(name="mnist", test_as_validation=True),
                 model=ModelConfig(kind="cnn", conv_channels=16, batchnorm=True))
    rows = presets.table({"a": small, "b": Config(), "c": cnn}).splitlines()
    assert rows[:2] == ["| setting | a | b | c |", "| --- | --- | --- | --- |"]
    assert rows[2:] == [
        "| `data` | embedded: 100 train, 2,000 validation, 14x14 (downscale 2) | embedded: "
        "10,000 train, 2,000 validation | mnist: 60,000 train, 10,000 validation (the official "
        "test split) |",
        "| `model` | MLP 64-32 | MLP 64-32 | the paper's CNN, 16 channels, BatchNorm |",
        "| `train.members` | 2 | 8 | 8 |",
        "| `train.epochs` | 3 | 3 | 3 |",
        "| `train.batch_size` | 128 | 128 | 128 |",
        "| `train.learning_rate` | 0.01 | 0.01 | 0.01 |",
        "| `train.momentum` | 0.9 | 0 | 0 |",
        "| `widths` | () | 8, 16 | 8, 16 |",
    ]


def test_a_preset_changed_without_the_docs_fails_the_check(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "studies.md"
    stale.write_text(DOCS.read_text())
    assert presets.main([str(stale), "--check"]) == 0
    cpu = cscore.PRESETS["cpu"]
    monkeypatch.setitem(cscore.PRESETS, "cpu", dataclasses.replace(
        cpu, train=dataclasses.replace(cpu.train, epochs=11)))
    assert presets.main([str(stale), "--check"]) == 1
    assert f"run `{presets.COMMAND}`" in capsys.readouterr().err
    assert presets.main([str(stale)]) == 0
    assert "| `train.epochs` | 2 | 11 | 10 |" in stale.read_text()
    assert presets.main([str(stale), "--check"]) == 0


def test_the_command_outside_the_repository_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert presets.main(["--check"]) == 2
    assert capsys.readouterr().err.startswith(f"{presets.COMMAND}: no docs/studies.md here")
    assert presets.main([str(DOCS), "--check"]) == 0  # named: checked from anywhere
