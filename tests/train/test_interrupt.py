"""Ctrl-C at any point of a step, then ``--resume``: the final weights equal an uninterrupted run's, bit for bit.

Two places an interrupt can land: while the step computes (its batch already drawn from the
trainer's generator, dropout already drawn from torch's), and inside the update (optimiser
step, counters, EMA). The first must leave no trace of the step; the second must complete
the update before the interrupt takes effect. Either way the checkpoint written on the way
out is the one an uninterrupted run writes at that step, and a clean checkpoint of the same
step is never replaced.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from ebru.train import Trainer
from ebru.train import checkpoint as ckpt

from .test_trainer import params, tiny_config, tiny_dataset

STEPS = 6


def config():
    return tiny_config(steps=STEPS, checkpoint_every=2, sample_every=0, tensorboard=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    trainer = Trainer(config(), tmp_path_factory.mktemp("full"), dataset=tiny_dataset(), progress=False)
    trainer.fit()
    return params(trainer), {k: v.clone() for k, v in trainer.ema.state_dict().items()}


def resume_to_the_end(out) -> Trainer:
    trainer = Trainer(config(), out, resume=True, dataset=tiny_dataset(), progress=False)
    trainer.fit()
    assert trainer.step == STEPS
    return trainer


def assert_same_weights(trainer: Trainer, uninterrupted) -> None:
    weights, ema = uninterrupted
    for k, v in weights.items():
        assert torch.equal(v, trainer.net.state_dict()[k]), k
    for k, v in ema.items():
        assert torch.equal(v, trainer.ema.state_dict()[k]), k


def test_interrupt_while_a_step_computes_leaves_no_trace(tmp_path, uninterrupted):
    trainer = Trainer(config(), tmp_path, dataset=tiny_dataset(), progress=False)
    clean = ckpt.load_checkpoint  # the step-4 checkpoint before the interrupt, to compare after
    real_loss = trainer.task.loss

    def loss(model, batch, part):
        if trainer.step == 4:  # step 5 is under way: its batch and dropout noise are drawn
            raise KeyboardInterrupt
        return real_loss(model, batch, part)

    trainer.task.loss = loss
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.step == 4
    saved = {n: p for p, n in ckpt.list_checkpoints(tmp_path / "checkpoints")}
    assert max(saved) == 4
    rng = clean(saved[4])["rng"]
    # the states the step began with, which is what the step-4 checkpoint of any run holds
    assert torch.equal(rng["data"], trainer.gen.get_state())
    assert torch.equal(rng["torch"], torch.get_rng_state())
    assert_same_weights(resume_to_the_end(tmp_path), uninterrupted)


def test_interrupt_during_the_update_completes_the_step_first(tmp_path, uninterrupted):
    trainer = Trainer(config(), tmp_path, dataset=tiny_dataset(), progress=False)
    real_step = trainer.opt.step

    def step(*args, **kwargs):
        if trainer.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered in the middle of the update
        return real_step(*args, **kwargs)

    trainer.opt.step = step
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.step == 5  # the update that was under way was applied whole
    assert max(n for _, n in ckpt.list_checkpoints(tmp_path / "checkpoints")) == 5
    assert_same_weights(resume_to_the_end(tmp_path), uninterrupted)


def test_an_interrupt_never_replaces_a_clean_checkpoint_of_the_same_step(tmp_path):
    trainer = Trainer(config(), tmp_path, dataset=tiny_dataset(), progress=False)
    real_loss = trainer.task.loss
    calls = []

    def loss(model, batch, part):
        if trainer.step == 2:
            raise KeyboardInterrupt
        return real_loss(model, batch, part)

    trainer.task.loss = loss
    real_save = trainer.save_checkpoint
    trainer.save_checkpoint = lambda: calls.append(trainer.step) or real_save()
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert calls == [2]  # written once, by the schedule; not again on the way out
