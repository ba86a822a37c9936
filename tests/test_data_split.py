"""The batches interface of data (``data/split.py``) and the consumers that read it.

Splits held as tensors batch exactly as the loops did before the interface (the same
permutation, the same augmentation draws, the same weights bit for bit), and a split that
holds no tensors at all (generated batch by batch, as a streamed data set would be) works
with accuracy and distillation unchanged: a new data source changes ``data/`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtune.compress.distill import DistillConfig, TrialDiverged, distill, kd_loss
from slimtune.data import Batch, Split, TensorSplit, as_split, load_dataset
from slimtune.data.datasets import _tensor_splits
from slimtune.models.teacher import TeacherConfig, data_fingerprint, train_teacher
from slimtune.objectives.accuracy import accuracy, logits_of
from tests.tiny_models import ConvNet


def _toy(n: int = 23, seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g))


def _shift(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A toy augmentation drawing from the generator."""
    return x + torch.rand(len(x), 1, 1, 1, generator=generator)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the split --------------------------------------------------------------------------
def test_shuffled_batches_cover_every_example_once_in_the_order_of_one_randperm():
    s = _toy()
    batches = list(s.batches(5, shuffle=True, generator=torch.Generator().manual_seed(7)))
    assert [len(b.index) for b in batches] == [5, 5, 5, 5, 3]
    order = torch.cat([b.index for b in batches])
    assert torch.equal(order, torch.randperm(23, generator=torch.Generator().manual_seed(7)))
    for b in batches:  # the index says where each example came from
        assert torch.equal(b.x, s.x[b.index]) and torch.equal(b.y, s.y[b.index])
    again = torch.cat([b.index for b in s.batches(5, shuffle=True,
                                                  generator=torch.Generator().manual_seed(7))])
    assert torch.equal(order, again)


def test_unshuffled_batches_are_in_order_and_each_pass_draws_a_new_permutation():
    s = _toy()
    batches = list(s.batches(10))
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(23))
    assert torch.equal(torch.cat([b.x for b in batches]), s.x)
    g = torch.Generator().manual_seed(0)
    first = torch.cat([b.index for b in s.batches(23, shuffle=True, generator=g)])
    second = torch.cat([b.index for b in s.batches(23, shuffle=True, generator=g)])
    assert not torch.equal(first, second) and torch.equal(first.sort().values, second.sort().values)


def test_augmentation_only_when_asked_and_drawn_after_the_permutation():
    s = TensorSplit(_toy().x, _toy().y, augment=_shift)
    assert s.augments and not _toy().augments
    plain = next(s.batches(4))
    assert torch.equal(plain.x, s.x[:4])  # accuracy and logits never augment
    got = list(s.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1),
                         augment=True))
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(23, generator=g)
    want = [_shift(s.x[perm[i : i + 4]], g) for i in range(0, 23, 4)]
    assert all(torch.equal(b.x, w) for b, w in zip(got, want, strict=True))


def test_to_moves_the_batches_and_head_takes_the_first_examples():
    s = _toy()
    moved = s.to("meta")
    assert moved.x.device.type == "meta" and len(moved) == 23
    b = next(moved.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert b.x.device.type == b.y.device.type == b.index.device.type == "meta"
    h = s.head(4)
    assert len(h) == 4 and torch.equal(h.x, s.x[:4]) and torch.equal(h.y, s.y[:4])
    assert len(s.head(100)) == 23
    assert h.input_shape == s.input_shape == (1, 6, 6)


def test_a_batch_size_below_one_is_refused_with_its_value():
    with pytest.raises(ValueError, match=r"`batch_size >= 1` must hold, but got 0"):
        next(_toy().batches(0))


def test_as_split_takes_a_split_or_tensors_and_refuses_a_mix():
    s = _toy()
    assert as_split(s) is s
    assert torch.equal(as_split(s.x, s.y).x, s.x)
    with pytest.raises(TypeError, match="`y` must be given"):
        as_split(s.x)
    with pytest.raises(TypeError, match="`y` must be None"):
        as_split(s, s.y)


# -- Splits ------------------------------------------------------------------------------
def test_splits_hold_three_splits_and_keep_the_tensor_attributes():
    d = load_dataset("digits")
    assert isinstance(d.train, Split) and d.split("val") is d.val
    assert torch.equal(d.x_train, d.train.x) and torch.equal(d.y_test, d.test.y)
    assert d.input_shape == d.train.input_shape == (1, 8, 8)
    assert not d.train.augments
    moved = d.to("meta")
    assert moved.val.x.device.type == "meta" and d.val.x.device.type == "cpu"
    # the teacher cache key of the digits teacher: the same digest as before the interface
    assert data_fingerprint(d) == d.train.fingerprint() == "00afd76601b4e9bb"


def test_the_training_split_carries_the_data_sets_augmentation():
    s = _toy(8)
    splits = _tensor_splits("toy", (s.x, s.y), (s.x, s.y), (s.x, s.y), 5, augment="crop_flip")
    assert splits.train.augments and not splits.val.augments and not splits.test.augments
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    b = next(splits.train.batches(8, augment=True, generator=g1))
    assert torch.equal(b.x, splits.augment_batch(s.x, g2))


# -- the consumers, bit for bit against the loops before the interface --------------------
def _old_distill(student, teacher, x, y, config, *, augment=None, generator=None):
    """The fine-tune loop as it was (commit d504782), the reference."""
    if isinstance(teacher, nn.Module):
        teacher.eval()
        if augment is None:
            teacher = logits_of(teacher, x)
    n = len(x)
    steps_per_epoch = math.ceil(n / config.batch_size)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    student.train()
    for _epoch in range(config.epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        for i in range(steps_per_epoch):
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
            xb = x[idx] if augment is None else augment(x[idx], generator)
            if isinstance(teacher, nn.Module):
                with torch.no_grad():
                    t_logits = teacher(xb)
            else:
                t_logits = teacher[idx]
            loss = kd_loss(student(xb), t_logits, y[idx], config.temperature, config.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return student.eval()


@pytest.mark.parametrize("augment", [None, _shift], ids=["logits-once", "teacher-per-batch"])
def test_distill_over_a_split_equals_the_old_loop_bit_for_bit(augment):
    torch.manual_seed(0)
    teacher, s = ConvNet(), _toy(50)
    cfg = DistillConfig(epochs=3, batch_size=16, lr=1e-2, temperature=3.0, alpha=0.7)
    torch.manual_seed(1)
    old = _old_distill(ConvNet(), teacher, s.x, s.y, cfg, augment=augment,
                       generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    new = distill(ConvNet(), teacher, TensorSplit(s.x, s.y, augment), cfg,
                  generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    legacy = distill(ConvNet(), teacher, s.x, s.y, cfg, augment=augment,
                     generator=torch.Generator().manual_seed(3))
    assert _same_weights(old, new) and _same_weights(old, legacy)
    assert not new.training


def test_distill_refuses_an_augment_beside_a_split():
    with pytest.raises(TypeError, match="carries its augmentation"):
        distill(ConvNet(), ConvNet(), _toy(), DistillConfig(epochs=1), augment=_shift)


def test_a_diverging_fine_tune_over_a_split_names_its_epoch():
    s = _toy(32)
    logits = torch.zeros(32, 5)
    logits[3, 0] = float("nan")
    with pytest.raises(TrialDiverged, match="at epoch 1"):
        distill(ConvNet(), logits, s, DistillConfig(epochs=2, batch_size=32))


def _old_train_teacher(model, x, y, config, augment):
    """The teacher's loop as it was (commit d504782, CPU), the reference."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    steps = math.ceil(len(x) / config.batch_size)
    total = max(1, config.epochs * steps)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          nesterov=True, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total)
    for _epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx],
                                   label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@pytest.mark.parametrize("augment", [None, "crop_flip"])
def test_teacher_training_over_the_one_loop_equals_its_old_loop_bit_for_bit(augment):
    s = _toy(40)
    splits = _tensor_splits("toy", (s.x, s.y), (s.x[:10], s.y[:10]), (s.x, s.y), 5,
                            augment=augment)
    cfg = TeacherConfig(epochs=2, batch_size=16, seed=3)
    torch.manual_seed(0)
    init = ConvNet().state_dict()
    old, new = ConvNet(), ConvNet()
    old.load_state_dict(init)
    new.load_state_dict(init)
    _old_train_teacher(old, s.x, s.y, cfg, splits.augment_batch)
    steps, epochs = [], []
    train_teacher(new, splits, cfg, on_epoch=lambda e, n, a: epochs.append((e, n, a)),
                  on_step=lambda step, total: steps.append((step, total)))
    assert _same_weights(old, new)
    assert steps == [(i, 6) for i in range(1, 7)]
    assert [e[:2] for e in epochs] == [(1, 2), (2, 2)]


# -- a split that holds no tensors: what a streamed data set implements --------------------
class GeneratedSplit:
    """``n`` examples made on demand from their position (as a stream reads them from a
    file): no tensors of the whole split are ever held."""

    def __init__(self, n: int, device: str | torch.device = "cpu") -> None:
        self.n, self.device = n, torch.device(device)

    def __len__(self) -> int:
        return self.n

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 6, 6)

    @property
    def augments(self) -> bool:
        return False

    def _examples(self, index: torch.Tensor) -> Batch:
        pos = index.to(torch.float32)[:, None, None, None]
        grid = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
        return Batch(torch.sin(pos * 0.37 + grid * 0.11).to(self.device),
                     (index % 5).to(self.device), index.to(self.device))

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, augment: bool = False
                ) -> Iterator[Batch]:
        order = torch.randperm(self.n, generator=generator) if shuffle else torch.arange(self.n)
        for start in range(0, self.n, batch_size):
            yield self._examples(order[start : start + batch_size])

    def to(self, device: torch.device | str) -> GeneratedSplit:
        return GeneratedSplit(self.n, device)

    def head(self, n: int) -> GeneratedSplit:
        return GeneratedSplit(min(n, self.n), self.device)

    def fingerprint(self) -> str:
        return f"generated-{self.n}"

    def materialized(self) -> TensorSplit:
        b = self._examples(torch.arange(self.n))
        return TensorSplit(b.x, b.y)


def test_a_generated_split_works_with_accuracy_logits_and_distill():
    stream = GeneratedSplit(45)
    assert isinstance(stream, Split)
    held = stream.materialized()
    torch.manual_seed(0)
    teacher = ConvNet()
    assert accuracy(teacher, stream, batch_size=8) == accuracy(teacher, held.x, held.y)
    assert accuracy(teacher, stream.head(10)) == accuracy(teacher, held.head(10))
    assert torch.equal(logits_of(teacher, stream, 7), logits_of(teacher, held.x))
    cfg = DistillConfig(epochs=2, batch_size=16, lr=1e-2)
    torch.manual_seed(1)
    a = distill(ConvNet(), teacher, stream, cfg, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    b = distill(ConvNet(), teacher, held, cfg, generator=torch.Generator().manual_seed(5))
    assert _same_weights(a, b)


def test_a_streamed_split_has_no_tensor_attributes_and_says_what_to_read():
    s = _toy(8)
    splits = _tensor_splits("toy", (s.x, s.y), (s.x, s.y), (s.x, s.y), 5)
    splits.train = GeneratedSplit(30)
    assert splits.input_shape == (1, 6, 6) and torch.equal(splits.x_val, s.x)
    with pytest.raises(AttributeError, match=r"`x_train` needs a split held as tensors.*"
                                             r"`\.train\.batches\(\.\.\.\)`"):
        _ = splits.x_train
