"""EL2N and GraNd (Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet", NeurIPS 2021).

    memjax run el2n --preset cpu [--dataset mnist --data-dir ../shared/data]

Trains the members to an early epoch (`train.epochs`), then scores every training example
in evaluation mode as mansheej/data_diet does (scripts/get_run_score.py):
EL2N = ||softmax(f(x)) - onehot(y)||_2 (data_diet/scores.py, `get_lord_error_fn`, ord 2)
and GraNd = ||dCE/dparams||_2 (`get_grad_norm_fn`: memjax.metrics.grand), each averaged
over members (scripts/get_mean_score.py); written in the order-safe export (el2n.csv/.npz).
Differs: data_diet scores a CIFAR-10 ResNet18 at epoch 20 of 200, over 10 runs, on inputs
standardized per channel; the paper preset scores the paper's CNN at epoch 20, on [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from memjax.config import DataConfig, ModelConfig, TrainConfig, check_numbers, validate
from memjax.data import load_dataset
from memjax.evaluation import probabilities
from memjax.experiments.example_scores import spearman, spread, write_example_scores
from memjax.experiments.figures import example_figure
from memjax.measurements import AtTheEnd
from memjax.metrics import el2n, grand
from memjax.models import computing_in
from memjax.phase import Data, Phase
from memjax.results import RunDir
from memjax.runner import Runner

EXPERIMENT = None  # beyond the paper: `memjax reproduce` runs it only when named (--only)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden=(256, 256)))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # data_diet's SGD
        members=10, epochs=3, learning_rate=0.1, momentum=0.9))
    grand_chunk: int = 256  # examples per GraNd step (each holds per-example gradients)
    per_class: int = 6  # examples shown at each end of a class in the figure


PAPER = Config(data=DataConfig(name="cifar10", train_size=None),
               model=ModelConfig(kind="cnn", conv_channels=200, batchnorm=True),
               train=TrainConfig(members=10, epochs=20, learning_rate=0.01, momentum=0.9,
                                 eval_chunk=1000, compute_dtype="bfloat16"), grand_chunk=64)
PRESETS = {"smoke": replace(Config(), data=DataConfig(train_size=512, validation_size=64),
                            model=ModelConfig(hidden=(32,)),
                            train=TrainConfig(members=4, epochs=2, batch_size=64), per_class=3),
           "cpu": Config(), "paper": PAPER}


def check(config: Config) -> None:
    """The checks the config alone allows, before anything runs (MemjaxError)."""
    validate(config)
    check_numbers(config, positive=("grand_chunk", "per_class"))


@dataclass(frozen=True)
class Scores(AtTheEnd):
    """[M, N] EL2N and GraNd of every member on the training split, in evaluation mode."""

    grand_chunk: int
    name: str = "scores"
    outputs: tuple[str, ...] = ("el2n", "grand")

    def programs(self, apply, train: TrainConfig) -> dict:
        return {"el2n": lambda v, x, y: el2n(probabilities(
                    computing_in(apply, train.compute_dtype), v, x, chunk=train.eval_chunk,
                    member_chunk=train.member_chunk), y),
                "grand": lambda v, x, y: grand(apply, v, x, y, chunk=self.grand_chunk,
                                               member_chunk=train.member_chunk,
                                               compute_dtype=train.compute_dtype)}


def phases(config: Config) -> list[Phase]:
    """The members trained to the scoring epoch, then scored."""
    return [Phase("early", config.model, config.train, Data(config.data),
                  measurements=(Scores(config.grand_chunk),))]


def run(config: Config, run_dir: RunDir) -> dict:
    check(config)
    dataset = load_dataset(config.data)
    outcome = Runner.of(phases(config)[0], dataset).execute(run_dir, log=lambda epoch, r: {
        "epoch": epoch, **{k: float(r[k].mean()) for k in ("train_loss", "train_accuracy")}})
    scores = {name: outcome.final[name].mean(0) for name in ("el2n", "grand")}
    write_example_scores(run_dir, "el2n", dataset.train, dataset.order["train"], scores)
    summary = {"order": dataset.order, "epoch": config.train.epochs,
               "members": config.train.members,
               "train_accuracy": float(outcome.history["train_accuracy"][-1].mean()),
               "spearman_el2n_grand": spearman(scores["el2n"], scores["grand"]),
               **{name: spread(s, (10, 50, 90)) for name, s in scores.items()}}
    run_dir.write_json("summary.json", summary)
    run_dir.write_npz("results.npz", {f"{k}_members": v for k, v in outcome.final.items()})
    example_figure(run_dir, "fig_el2n_examples.png", dataset.train, scores["el2n"],
                   f"EL2N at epoch {config.train.epochs}", config.per_class)
    return {"summary": summary, "model_examples_per_second": outcome.runner.throughput}


def evidence(summary: dict) -> list[dict]:
    """How EL2N and GraNd agree (claim None: no claim of the paper is judged)."""
    return [{"claim": None, "supports": None, "text": (
        f"el2n: at epoch {summary['epoch']} (training accuracy {summary['train_accuracy']:.3f}),"
        f" EL2N and GraNd rank the examples with Spearman {summary['spearman_el2n_grand']:.2f}")}]
