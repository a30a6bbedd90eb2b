"""The one path by which memjax trains an ensemble: every study and benchmark goes through it.

    phase = Phase("width-512", model, train, Data(config.data), Members(ids, widths=...),
                  desc="width <= 512", measurements=(Evaluation("validation_accuracy"),))
    outcome = Runner.of(phase, dataset).execute(run_dir)   # memjax.phase, memjax.measurements
    outcome.history["validation_accuracy"]                 # [epochs, M]

A `Runner` builds the ensemble from configs and per-member arrays (`Members`: ids, widths,
example masks, noise fractions, regularizer strengths, learning rates, weight decay,
adversarial weights), places it on the device mesh (members split over the `members` axis,
the data replicated), and trains it epoch by epoch with a progress bar. After each epoch it
runs the phase's measurements on the device and keeps their [M] results in a per-epoch
history (`run` takes a `measure` function for the same); it stops members that converged
(`converge_at`), isolates diverged ones, and checkpoints the state with the history so
that `--resume` continues bit for bit.

Placement: the stored state holds the member count padded once to a multiple of the device
count (dummy copies of the last member), so no epoch gathers across devices. Dummy members
never appear in results, the history, checkpoints or the `log` callback (a `measure`
computes on the stored variables, and its results are cut to the real members);
checkpoints hold the real members only, so a run may resume on another device count.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from memjax import convergence, cost, dynamics
from memjax.config import ModelConfig, TrainConfig
from memjax.data import Split
from memjax.ensemble import EnsembleState, pad_members
from memjax.evaluation import evaluation_program, member_accuracy
from memjax.members import (Members, build_ensemble, epoch_program, member_view,
                            note_unmasked_batchnorm, searching)
from memjax.metrics.lass import TRAINING_LASS
from memjax.models import computing_in
from memjax.data import Dataset
from memjax.errors import MemjaxError
from memjax.phase import Outcome, Phase
from memjax.results import RunDir, check_phase_id
from memjax.sharding import (default_mesh, put_members, replicate, shard_members,
                             take_members, to_host)
from memjax.views import MemberView, NoiseSource, noise_source

# A study's per-epoch measurement: (runner, epoch) -> {name: [members] array (or
# [padded members]: cut to the real ones) or a scalar}, computed on the device.
Measure = Callable[["Runner", int], dict]


class Runner:
    """An ensemble placed on the devices, its data, and its compiled epoch.

    model, train: the configs (train.members is ignored when `members` is given; else
    members 0 .. train.members - 1). split: the training set, of num_classes classes;
    data_seed, input_stats: how its noise is drawn (memjax.data). mesh: None for every
    device (at most one per member). `members` is the Members value, `member_count`
    their number (the real ones), `padded` that number padded to the devices.
    """

    def __init__(self, model: ModelConfig, train: TrainConfig, split: Split, num_classes: int,
                 members: Members | None = None, *, data_seed: int = 0,
                 input_stats: str = "per_pixel", mesh=None):
        train.check_data(len(split), split.x.shape[1:])
        self.split = split
        members = members or Members(np.arange(train.members))
        self.train, self.members, self.member_count = train, members, members.count
        self.mesh = mesh or default_mesh(self.member_count)
        devices = self.mesh.shape["members"]
        self.padded = -(-self.member_count // devices) * devices
        padded = members.padded(self.padded)
        example = np.zeros((1,) + split.x.shape[1:], np.float32)
        self.network, tx, state = build_ensemble(model, train, num_classes, example, padded)
        if members.example_mask is not None and "batch_stats" in state.variables:
            note_unmasked_batchnorm(self.network)
        self.apply = self.network.apply  # float32: what the metrics (LASS, sensitivity) take
        # accuracy is measured in the precision the members train in
        self._evaluate_apply = computing_in(self.apply, train.compute_dtype)
        # (stacked variables, x, y) -> {"correct", "loss"}: the program memjax.cost counts
        self.evaluation = evaluation_program(self.apply, train, self.mesh)
        self._base_lr = np.asarray(state.learning_rate)  # (the epoch donates the state)
        if train.record_dynamics:
            state = state.replace(dynamics=dynamics.empty(self.padded, len(split),
                                                         train.aum_include_first_epoch))
        self.state = shard_members(state, self.mesh, self.padded)
        view = member_view(padded, len(split), data_seed)
        noise = None
        if view.input_noise_mask is not None or view.label_noise_mask is not None:
            source = noise_source(split, num_classes, data_seed, input_stats)
            noise = NoiseSource(source.x if view.input_noise_mask is not None else None,
                                source.y if view.label_noise_mask is not None else None)
        self.x, self.y, self.view, self.noise = self._put(split.x, split.y, view, noise)
        mask = members.example_mask
        used = members.own_examples()
        self._own = (self.x, self.y, self.view, self.noise)
        if used is not None:
            take = lambda a, axis=0: None if a is None else np.take(a, used, axis)
            self._own = self._put(take(split.x), take(split.y), view.replace(
                example_mask=take(view.example_mask, 1),
                input_noise_mask=take(view.input_noise_mask, 1),
                label_noise_mask=take(view.label_noise_mask, 1)),
                noise and NoiseSource(take(noise.x), take(noise.y)))
        # (static: the compiled epoch runs the in-step search for these members only)
        self._searching = searching(padded)
        self.train_epoch = epoch_program(self.network, tx, train, self.mesh, mask)
        # each member's training examples per epoch
        self._examples = (np.full(self.padded, len(split)) if mask is None
                          else np.sum(padded.example_mask, 1))
        self.seconds = self.model_examples = 0.0
        self._compiled = None
        self.converged = np.zeros(self.padded, bool)  # stopped members: they skip epochs
        self.training_members = self.padded  # members in the last epoch's program
        # what decides whether a smaller program for the active members pays: epochs
        # still to run (set by `run`), seconds of the last epoch and of compiling one
        self._remaining, self._epoch_seconds, self._compile_seconds = None, 0.0, 0.0
        self.phase_id = ""  # the phase `run` trains (it names the programs memjax.cost records)
        self.phase = self.dataset = None  # (set by `of`)

    @classmethod
    def of(cls, phase: Phase, dataset: Dataset, mesh=None) -> "Runner":
        """The Runner of a declared phase (memjax.phase) on `dataset`, whose training split
        must have the size the phase was declared for; `execute` runs it."""
        split, classes = phase.data.split(dataset)
        declared = phase.data.shape().train
        if len(split) != declared:
            raise MemjaxError(f"phase {phase.id} was declared for {declared} training "
                              f"examples; the data has {len(split)}")
        runner = cls(phase.model, phase.training, split, classes, phase.members,
                     data_seed=phase.data.seed, input_stats=phase.data.input_stats, mesh=mesh)
        runner.phase, runner.dataset = phase, dataset
        return runner

    def execute(self, run_dir: RunDir | None = None,
                log: Callable[[int, dict], dict | None] | None = None) -> Outcome:
        """Run the phase of `of`: train its epochs with its per-epoch measurements (and its
        convergence), then take its end-of-phase measurements. See `run` for run_dir, log."""
        from memjax.measurements import Convergence

        phase, epochs = self.phase, self.phase.epoch_count
        converge_at = next((m.threshold for m in phase.measurements
                            if isinstance(m, Convergence)), None)
        bound = [(m, m.bind(self, self.dataset)) for m in phase.measurements
                 if not isinstance(m, Convergence)]
        during = [(m, f) for m, f in bound if m.every is not None]

        def measure(runner, epoch):
            out = {}
            for m, f in during:
                out.update(f(epoch) if m.due(epoch, epochs) else
                           {name: np.full(self.member_count, np.nan, np.float32)
                            for name in m.outputs})
            return out

        self.phase_id = phase.id
        history = {} if not epochs else self.run(
            epochs, phase=phase.id, desc=phase.text, run_dir=run_dir,
            measure=measure if during else None, converge_at=converge_at, log=log)
        final = {}  # (of the real members: each measurement cuts its own)
        for m, f in bound:
            if m.every is None:
                final.update(to_host(f(epochs)))
        return Outcome(history, final, self)

    def _put(self, x, y, view: MemberView, noise: NoiseSource | None):
        """Training data on the devices: x, y and the noise on every one, the view's
        members on theirs."""
        return (*replicate((x, y), self.mesh), shard_members(view, self.mesh, self.padded),
                None if noise is None else replicate(noise, self.mesh))

    # ---- what the members are now ----------------------------------------------------

    @property
    def variables(self):
        """The stacked variables [padded members, ...] on the devices (for the metric
        functions; a measurement's results are cut to the real members by `run`)."""
        return self.state.variables

    def member_state(self) -> EnsembleState:
        """The state of the real members only (what checkpoints hold)."""
        if self.padded == self.member_count:
            return self.state
        return jax.tree.map(lambda a: a[:self.member_count] if a.ndim else a, self.state)

    def _place(self, state: EnsembleState) -> EnsembleState:
        state = jax.tree.map(lambda a: pad_members(a, self.padded) if a.ndim else a, state)
        return shard_members(state, self.mesh, self.padded)

    def evaluate(self, x: jax.Array, y: jax.Array, member_rows: np.ndarray | None = None,
                 program: str = "evaluation") -> dict[str, jax.Array]:
        """memjax.evaluation.evaluate of the real members (or of those at `member_rows`,
        indices): {"correct", "loss"}: [M, N], in the training's compute precision.
        program: its name for memjax.cost.record."""
        variables = self.variables
        if member_rows is not None:
            variables = jax.tree.map(lambda a: a[np.asarray(member_rows)], variables)
        cost.record(program, self.evaluation, variables, x, y)
        out = self.evaluation(variables, x, y)
        return {k: v[:self.member_count] if member_rows is None else v for k, v in out.items()}

    def own_accuracy(self) -> jax.Array:
        """[M] each member's accuracy on its own view of the training set (its examples,
        its noise), in evaluation mode and the training's compute precision."""
        fn = functools.partial(member_accuracy, self._evaluate_apply,
                               chunk=self.train.eval_chunk, member_chunk=self.train.member_chunk,
                               mesh=self.mesh)
        cost.record(f"{self.phase_id}/own_accuracy", fn, self.variables, *self._own)
        return fn(self.variables, *self._own)["accuracy"][:self.member_count]

    def placement(self) -> dict:
        """How the members sit on the devices: device count, members per device, the
        member chunk of the training epoch, and the dummy members padding the count."""
        placed = self.train_epoch.placement(self.state, self.train.seed, self.x, self.y,
                                            self.view, self.noise)
        return {**placed, "members": self.member_count, "dummy_members": self.padded - self.member_count}

    # ---- training ------------------------------------------------------------------------

    def compile(self) -> float:
        """Compile the training epoch ahead (so that `seconds` counts training alone);
        returns the seconds it took (0 when compiled already)."""
        if self._compiled is not None:
            return 0.0
        start = time.perf_counter()
        self._compiled = self.train_epoch.lower(self.state, self.train.seed, self.x, self.y,
                                                self.view, self.noise,
                                                searching=self._searching).compile()
        self._compile_seconds = time.perf_counter() - start
        return self._compile_seconds

    def epoch(self) -> dict[str, np.ndarray]:
        """Train one epoch; the trainer's metrics of the real members, on the host (NaN
        loss and accuracy for members that have converged, which no longer train)."""
        cost.record(f"{self.phase_id}/train",
                    functools.partial(self.train_epoch, searching=self._searching), self.state,
                    self.train.seed, self.x, self.y, self.view, self.noise,
                    while_trips=1 if self._searching is None else cost.in_step_iterations(
                        self.train.adversarial_protocol, TRAINING_LASS["max_iterations"]))
        start = time.perf_counter()
        if self.converged.any() and not self.converged.all():
            metrics = self._active_epoch()
        else:
            self.state, metrics = self._program()(self.state, self.train.seed, self.x,
                                                  self.y, self.view, self.noise)
            metrics = {k: np.asarray(v) for k, v in to_host(metrics).items()}
            self.training_members = self.padded
        self._epoch_seconds = time.perf_counter() - start
        self.seconds += self._epoch_seconds
        self.model_examples += float(self._examples[:self.member_count][
            ~self.converged[:self.member_count]].sum())
        return {k: v[:self.member_count] for k, v in metrics.items()}

    def _program(self, take: np.ndarray | None = None) -> Callable:
        """The epoch for the members `take` (indices; None: all): the compiled one where it
        fits them, else the jitted one with their static `searching`."""
        searching = self._searching
        if take is not None and searching is not None:
            searching = tuple(np.asarray(searching)[take])
        if (self._compiled is not None and searching == self._searching
                and (take is None or len(take) == self.padded)):
            return self._compiled
        return functools.partial(self.train_epoch, searching=searching)

    def _active_epoch(self) -> dict[str, np.ndarray]:
        """An epoch of the members that have not converged only: they are gathered into an
        ensemble of their own, trained, and put back. Converged members leave the
        computation: their parameters stay as they are (as at learning rate 0), and so do
        their BatchNorm statistics and optimizer state. A member's keys derive from its id,
        so the others train exactly as with them. The ensemble keeps its size, filled with
        copies of an active member, until a program of half the size (or less) holds them
        all and the epochs left would save more time than compiling it costs."""
        active = np.flatnonzero(~self.converged)
        size = convergence.program_size(self.training_members, len(active),
                                        self.mesh.shape["members"], self._remaining,
                                        self._epoch_seconds, self._compile_seconds)
        take = np.concatenate([active, np.repeat(active[-1:], size - len(active))])
        state, view = take_members((self.state, self.view), jnp.asarray(take), self.padded,
                                   self.mesh)
        state, metrics = self._program(take)(state, self.train.seed, self.x, self.y, view, self.noise)
        self.state = put_members(self.state, state, jnp.asarray(take), self.padded, self.mesh)
        self.training_members = size
        out = {"diverged": np.asarray(to_host(self.state.diverged))}
        for name, value in to_host(metrics).items():
            if name != "diverged":  # (the trained members' only: the state has everyone's)
                out[name] = np.full(self.padded, np.nan, np.float32)
                out[name][take] = value
        return out

    def run(self, epochs: int, *, phase: str, desc: str | None = None,
            run_dir: RunDir | None = None,
            measure: Measure | None = None, converge_at: float | None = None,
            log: Callable[[int, dict], dict | None] | None = None) -> dict[str, np.ndarray]:
        """Train until `epochs` epochs are done; return the history, name -> [epochs, M].

        phase: the phase's id (letters, digits, '.', '_', '-'), unique within a run: it
        names the phase's checkpoints, its diverged members and placement in the manifest,
        and its dynamics-<phase>.npz. desc: the progress bar's text (default: phase).
        After each epoch: the trainer's metrics (train_loss, train_accuracy averaged over the
        epoch's steps), then `measure(runner, epoch)` (name -> [M] or scalar; a name may
        replace a trainer metric), on the device, copied to the host once. converge_at:
        measure each member's accuracy on its own training set ("train_accuracy"), record
        the first epoch it reaches the threshold ("first_epoch", memjax.convergence) and
        stop training it (learning rate 0); the phase ends when every member has.
        log(epoch, record) returns the metrics.jsonl line for the epoch (None: none).
        run_dir: checkpoint the phase and the history, and resume them (a phase that ended
        early stays ended); diverged members are reported to it.
        """
        from tqdm.auto import tqdm

        history: dict[str, list] = {}
        check_phase_id(phase)
        self.phase_id = phase
        checkpoints = self._open_phase(run_dir, phase, epochs, history)
        done = int(self.state.epoch)
        try:
            if done < epochs and not history.get("stopped"):
                self.compile()
                for _ in tqdm(range(done, epochs), desc=desc or phase, unit="epoch", leave=False,
                              mininterval=1.0):
                    self._remaining = epochs - done
                    record, stop = self._measured_epoch(measure, converge_at, history)
                    done = int(self.state.epoch)
                    line = log(done, record) if log else None
                    if line is not None and run_dir is not None:
                        run_dir.log_metrics(line)
                    if checkpoints is not None:
                        checkpoints.save(self.member_state(), last=stop or done == epochs)
                    if stop:
                        break
        finally:
            self._remaining = None
            if checkpoints is not None:
                checkpoints.close()
        if run_dir is not None:
            diverged, ids = to_host((self.state.diverged, self.state.member_ids))
            run_dir.record_divergence(phase, np.asarray(diverged)[:self.member_count],
                                      np.asarray(ids)[:self.member_count])
            run_dir.record_placement(phase, self.placement())
            if self.state.dynamics is not None:
                self._save_dynamics(run_dir, phase)
        history.pop("stopped", None)
        return {k: np.stack([np.asarray(v) for v in values]) for k, values in history.items()}

    def _open_phase(self, run_dir: RunDir | None, phase: str, epochs: int, history: dict):
        """The phase's checkpoints (None: not checkpointed); on resume the state and
        `history` (in place) continue from the newest one."""
        if run_dir is None:
            return None
        template = self.member_state()
        checkpoints, restored = run_dir.open_phase(phase, template, epochs, history)
        if restored is not template:
            self.state = self._place(restored)
            if history.get("first_epoch"):
                self._freeze(np.asarray(history["first_epoch"][-1])
                             != convergence.NOT_CONVERGED)
        return checkpoints

    def _measured_epoch(self, measure: Measure | None, converge_at: float | None,
                        history: dict[str, list]) -> tuple[dict, bool]:
        """Train one epoch, measure, track convergence; append the record to `history`.
        Returns (record, whether the phase is over)."""
        record = self.epoch()
        record.pop("diverged")
        done = int(self.state.epoch)
        if measure is not None:
            record.update(self._real(to_host(measure(self, done))))
        stop = False
        if converge_at is not None:
            first = (history["first_epoch"][-1] if history.get("first_epoch")
                     else np.full(self.member_count, convergence.NOT_CONVERGED))
            record["train_accuracy"] = np.asarray(to_host(self.own_accuracy()))
            first = convergence.first_epochs(np.asarray(first), record["train_accuracy"], done,
                                             converge_at)
            record["first_epoch"] = first
            self._freeze(first != convergence.NOT_CONVERGED)
            stop = bool((first != convergence.NOT_CONVERGED).all())
        for name, value in record.items():
            history.setdefault(name, []).append(value)
        if stop:
            history["stopped"] = [True]
        return record, stop

    def dynamics_scores(self) -> dict[str, np.ndarray]:
        """The real members' per-example training-dynamics scores [M, N]
        (memjax.dynamics.scores); needs train.record_dynamics."""
        if self.state.dynamics is None:
            raise ValueError("no training dynamics recorded: set train.record_dynamics")
        return dynamics.scores(jax.tree.map(lambda a: np.asarray(a)[:self.member_count],
                                            to_host(self.state.dynamics)))

    def _save_dynamics(self, run_dir: RunDir, phase: str) -> None:
        """dynamics-<phase>.npz: the real members' scores, their averages, what varies
        across them and the examples' order-safe columns (memjax.dynamics.file_arrays)."""
        order = ("position in the split" if self.dataset is None
                 else self.dataset.order["train"])
        ids = np.asarray(to_host(self.state.member_ids))[:self.member_count]
        run_dir.write_npz(f"dynamics-{phase}.npz", dynamics.file_arrays(
            self.dynamics_scores(), ids, self.members, self.split, order))

    def _real(self, values: dict) -> dict[str, np.ndarray]:
        """Host values with dummy members cut off."""
        cut = lambda v: v[:self.member_count] if v.ndim and v.shape[0] == self.padded else v
        return {k: cut(np.asarray(v)) for k, v in values.items()}

    def _freeze(self, converged: np.ndarray) -> None:
        """Converged members stop training: they skip later epochs (`_active_epoch`), and
        their learning rate is 0 (what a checkpoint records)."""
        self.converged = pad_members(np.asarray(converged, bool), self.padded)
        lr = jnp.where(jnp.asarray(self.converged), 0.0, self._base_lr)
        self.state = self.state.replace(learning_rate=shard_members(lr, self.mesh, self.padded))

    @property
    def throughput(self) -> float:
        """Model-examples trained per second (training epochs only)."""
        return self.model_examples / max(self.seconds, 1e-9)
