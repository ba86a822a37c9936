"""``SearchConfig``: everything one search needs, validated up front."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slimtune.errors import ConfigError
from slimtune.objectives.latency import LatencyConfig
from slimtune.objectives.table import OBJECTIVES, objectives_of
from slimtune.search.fidelity import PROMOTIONS
from slimtune.spaces.space import PRUNING_MODES

__all__ = ["SearchConfig", "SAMPLERS", "OBJECTIVES", "PRUNING_MODES", "PROMOTIONS",
           "RESUME_OVERRIDES", "parse_quantity"]

#: settings that may change when a run is resumed (how it runs, not what it searches)
RESUME_OVERRIDES = ("trials", "budget_epochs", "address", "cpus_per_trial", "gpus_per_trial",
                    "max_failures", "storage", "study_name")

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30}


def parse_quantity(text: str | int | float, what: str, suffix: str = "") -> int:
    """``50kB`` -> 50000, ``1.5MB`` -> 1500000, ``2KiB`` -> 2048, ``1.2G`` -> 1200000000.

    ``suffix`` (``B`` for sizes) may follow the unit. ConfigError names ``what`` otherwise.
    """
    import math
    import re

    if isinstance(text, (int, float)):
        value = float(text)
    else:
        pattern = r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?)?\s*" + suffix + r"?\s*"
        m = re.fullmatch(pattern, str(text), flags=re.IGNORECASE)
        if not m:
            unit = f"{suffix}" if suffix else ""
            raise ConfigError(f"`{what}` must be a number with an optional unit k, M, G (or "
                              f"Ki, Mi, Gi){' and ' + unit if unit else ''}, like "
                              f"{'50kB or 1.5MB' if suffix else '2M or 1.2G'}, but got {text!r}")
        value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if math.isnan(value):
        raise ConfigError(f"`{what}` must be a number, but got {text!r}")
    if not value < 2**63:  # 1e400 is inf, and no budget is that large
        raise ConfigError(f"`{what}` must be below 2^63, but got {text!r}")
    if value < 1:
        raise ConfigError(f"`{what}` must be at least 1, but got {text!r}")
    return int(round(value))

SAMPLERS = ("nsga2", "nsga3", "tpe", "gp", "random")


@dataclass(frozen=True)
class SearchConfig:
    data: str = "digits"
    model: str = "small_cnn"
    trials: int = 60
    epochs: int = 6  # fine-tune epochs of each trial
    run_dir: Path | None = None  # default: runs/<data>-<model>
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None  # join this Ray cluster instead of starting a local one
    sampler: str = "nsga2"
    warm_start: bool = True
    guided: bool = True  # after the uniform warm start, sensitivity-guided plans
    lr: float = 1e-3  # fine-tune Adam learning rate
    batch_size: int = 64
    teacher_epochs: int | None = None  # default: 40 on digits, 10 elsewhere
    data_dir: Path | None = None
    subset: int | None = None  # at most this many training examples (val/test: a quarter)
    val_subset: int | None = None  # at most this many validation examples (default above)
    checkpoint: Path | None = None  # the user's trained weights for --model (no training)
    pruning: str = "both"  # which per-layer pruning knobs the space has
    knobs: tuple[str, ...] = ()  # opt-in knobs searched too (`--knob two_four`)
    #: the user's space file (``--space``): its path, or its plain data; stored as data
    #: (spaces/rules.py), so resume and export rebuild the same space without the file
    space: dict[str, Any] | str | Path | None = None
    objectives: tuple[str, ...] = ("accuracy", "size", "flops")
    max_failures: int | None = None  # end the search once this many trials failed
    max_size: int | None = None  # bytes: plans above are recorded infeasible, not trained
    max_flops: int | None = None  # effective MACs: likewise
    min_accuracy: float | None = None  # trials below are recorded infeasible
    early_stop: bool = True  # Pareto-aware early stopping of dominated trials
    storage: str | None = None  # SQLAlchemy URL of a shared study (default: SQLite in run dir)
    study_name: str = "slimtune"
    #: where trial artifacts go (search/artifact_store.py): a directory or s3://BUCKET/PREFIX
    #: (default: RUN_DIR/artifacts; with a shared --storage, that directory's absolute path)
    artifact_store: str | None = None
    #: the search's budget in fine-tune epochs, summed over all trials (``--budget-epochs``)
    budget_epochs: float | None = None
    #: multi-fidelity search (search/fidelity.py); None: on when ``budget_epochs`` is given
    fidelity: bool | None = None
    #: the fidelity ladder, fine-tune epochs reached at each rung (default 0, epochs/9, epochs)
    rungs: tuple[float, ...] | None = None
    eta: int = 3  # of the plans at a rung, the top 1/eta may move up
    #: how the plans of one non-dominated front at a rung are ordered for promotion:
    #: "hypervolume" (contribution, log costs; at most 1/eta of a rung) or "moasha"
    #: (crowding, ASHA's uncapped rule: MO-ASHA as published)
    promotion: str = "hypervolume"
    #: how the latency objective times a model: in PyTorch or onnxruntime (objectives/
    #: latency.py), on batches of ``latency_batch``, in onnxruntime the ``latency_format``
    #: ONNX file (``float``, ``lowbit`` or ``qdq``)
    latency_runtime: str = "torch"
    latency_batch: int = 1
    latency_format: str = "qdq"

    def __post_init__(self) -> None:
        checks = [
            (self.trials >= 1, f"`--trials` must be at least 1, but got {self.trials}"),
            (self.epochs >= 0, f"`--epochs` must be at least 0, but got {self.epochs}"),
            (self.cpus_per_trial > 0,
             f"`--cpus-per-trial` must be greater than 0, but got {self.cpus_per_trial}"),
            (self.gpus_per_trial >= 0,
             f"`--gpus-per-trial` must be at least 0, but got {self.gpus_per_trial}"),
            (self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(),
             f"`--gpus-per-trial` above 1 must be a whole number, but got {self.gpus_per_trial}"),
            (self.seed >= 0, f"`--seed` must be at least 0, but got {self.seed}"),
            (self.sampler in SAMPLERS,
             f"`--sampler` must be one of {', '.join(SAMPLERS)}, but got {self.sampler!r}"),
            (self.lr > 0, f"`lr` must be greater than 0, but got {self.lr}"),
            (self.batch_size >= 1, f"`batch_size` must be at least 1, but got {self.batch_size}"),
            (self.teacher_epochs is None or self.teacher_epochs >= 1,
             f"`--teacher-epochs` must be at least 1, but got {self.teacher_epochs}"),
            (self.max_failures is None or self.max_failures >= 1,
             f"`--max-failures` must be at least 1, but got {self.max_failures}"),
            (self.subset is None or self.subset >= 1,
             f"`--subset` must be at least 1, but got {self.subset}"),
            (self.val_subset is None or self.val_subset >= 1,
             f"`--val-subset` must be at least 1, but got {self.val_subset}"),
            (self.max_size is None or self.max_size >= 1,
             f"`--max-size` must be at least 1 byte, but got {self.max_size}"),
            (self.max_flops is None or self.max_flops >= 1,
             f"`--max-flops` must be at least 1, but got {self.max_flops}"),
            (self.min_accuracy is None or 0.0 <= self.min_accuracy <= 1.0,
             f"`--min-accuracy` must be between 0 and 1, but got {self.min_accuracy}"),
            (bool(self.study_name), "`--study-name` must not be empty"),
        ]
        objectives = tuple(self.objectives)
        object.__setattr__(self, "objectives", objectives)
        self.latency  # noqa: B018 - validates the --latency-* settings
        checks += self._fidelity_checks()
        object.__setattr__(self, "knobs", tuple(self.knobs))
        if self.artifact_store is not None:  # its canonical form, as the study stores it
            from slimtune.search.artifact_store import StoreURL

            object.__setattr__(self, "artifact_store", StoreURL.parse(self.artifact_store).url)
        if self.space is not None:
            from slimtune.spaces.rules import SpaceRules, load_space

            rules = (SpaceRules.from_dict(self.space) if isinstance(self.space, dict)
                     else load_space(self.space))
            object.__setattr__(self, "space", rules.to_dict())
        from slimtune.knobs import KNOBS

        opt_in = [n for n, k in KNOBS.items() if k.opt_in]
        checks += [
            (self.pruning in PRUNING_MODES, f"`--pruning` must be one of "
             f"{', '.join(PRUNING_MODES)}, but got {self.pruning!r}"),
            (all(o in OBJECTIVES for o in objectives), f"`--objectives` must be names from "
             f"{', '.join(OBJECTIVES)}, but got {','.join(objectives)!r}"),
            (len(set(objectives)) == len(objectives) and "accuracy" in objectives
             and len(objectives) >= 2,
             f"`--objectives` must name accuracy and at least one other objective, each "
             f"once, but got {','.join(objectives)!r}"),
            (all(k in opt_in for k in self.knobs), f"`--knob` must name opt-in knobs from "
             f"{', '.join(opt_in)}, but got {','.join(self.knobs)!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def _fidelity_checks(self) -> list[tuple[bool, str]]:
        """Resolve ``fidelity`` and ``rungs``; the rules they and ``budget_epochs`` obey."""
        fidelity = self.budget_epochs is not None if self.fidelity is None else self.fidelity
        object.__setattr__(self, "fidelity", bool(fidelity))
        rungs = self.rungs
        if fidelity and rungs is None:
            rungs = (0.0, self.epochs / 9, float(self.epochs))
        if rungs is not None:
            rungs = tuple(float(r) for r in rungs)
        object.__setattr__(self, "rungs", rungs)
        shared = self.storage is not None and not self.storage.startswith("sqlite:")
        return [
            (self.budget_epochs is None or self.budget_epochs > 0,
             f"`--budget-epochs` must be greater than 0, but got {self.budget_epochs}"),
            (not fidelity or self.budget_epochs is not None,
             "the multi-fidelity search needs `--budget-epochs N` (its budget in fine-tune "
             "epochs), but got none"),
            (not fidelity or self.epochs >= 1,
             f"the multi-fidelity search needs `--epochs` of at least 1, but got {self.epochs}"),
            (not fidelity or not shared,
             "the multi-fidelity search runs one driver: with a shared `--storage` use "
             "`--no-fidelity`, but got --storage " + str(self.storage).split("://")[0] + "://..."),
            (rungs is None or (len(rungs) >= 2 and rungs[0] >= 0 and rungs[-1] == self.epochs
                               and all(b > a for a, b in zip(rungs, rungs[1:], strict=False))),
             f"`--rungs` must be at least two rising fine-tune epochs from 0 or more, the last "
             f"equal to --epochs {self.epochs}, but got {list(rungs or [])}"),
            (self.eta >= 2, f"`--eta` must be at least 2, but got {self.eta}"),
            (self.promotion in PROMOTIONS, f"`--promotion` must be one of "
             f"{', '.join(PROMOTIONS)}, but got {self.promotion!r}"),
        ]

    @property
    def latency(self) -> LatencyConfig:
        """How the latency objective times a model (``--latency-*``)."""
        return LatencyConfig(self.latency_runtime, self.latency_batch, self.latency_format)

    @property
    def resolved_teacher_epochs(self) -> int:
        from slimtune.models.teacher import default_teacher_epochs

        return self.teacher_epochs or default_teacher_epochs(self.data)

    @property
    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        if self.model.startswith("memory:"):  # a model given in Python: its own id
            return Path("runs") / self.model.replace("memory:model-", "inmemory-")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{self.data}-{self.model}")
        return Path("runs") / safe

    @property
    def metrics(self) -> list[str]:
        """The trial metrics the study optimizes, in objective order."""
        return [o.metric for o in objectives_of(self.objectives)]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in objectives_of(self.objectives)]

    @property
    def constraints(self) -> dict[str, float]:
        """The budgets given, by constraint name (what ``trial.constraints`` holds)."""
        out: dict[str, float] = {}
        if self.max_size is not None:
            out["size"] = self.max_size
        if self.max_flops is not None:
            out["flops"] = self.max_flops
        if self.min_accuracy is not None:
            out["accuracy"] = self.min_accuracy
        return out

    def to_dict(self) -> dict[str, Any]:
        """The settings a resumed search reuses (the storage URL is never stored)."""
        d = asdict(self)
        d.pop("storage")
        d["objectives"] = list(self.objectives)
        d["knobs"] = list(self.knobs)
        d["rungs"] = list(self.rungs) if self.rungs is not None else None
        for k in ("data_dir", "checkpoint"):
            d[k] = str(d[k]) if d[k] is not None else None
        d["run_dir"] = str(self.resolved_run_dir)
        return d
