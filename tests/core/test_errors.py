"""One base class for user errors, one function that tells them from bugs."""

from __future__ import annotations

import pytest

from core.registry import CorruptCheckpoint, RegistryError, UnknownModel
from core.trainconfig import TrainingRequestError
from model.formats.archives import DatasetError
from model.formats.config import ConfigError
from model.formats.errors import Cancelled, UserError, user_message
from model.formats.imagefile import ImageRejected
from model.formats.manifest import CheckpointError


@pytest.mark.parametrize("cls", [ConfigError, CheckpointError, DatasetError, ImageRejected,
                                 RegistryError, UnknownModel, CorruptCheckpoint,
                                 TrainingRequestError])
def test_every_user_error_shares_the_base_and_shows_its_first_line(cls):
    exc = cls("what went wrong\nmore detail")
    assert isinstance(exc, UserError)
    assert user_message(exc) == "what went wrong"


def test_divergence_and_worker_refusals_are_user_errors_too():
    from model.training import EnergyExplosion
    from worker.lifecycle import JobInputError

    assert user_message(EnergyExplosion("energies diverged")) == "energies diverged"
    assert user_message(JobInputError("n must be an integer")) == "n must be an integer"


def test_bugs_and_cancellation_are_not_user_errors():
    assert user_message(KeyError("x")) is None
    assert user_message(RuntimeError("boom")) is None
    assert user_message(Cancelled("sampling cancelled")) is None
    assert user_message(MemoryError()) == "MemoryError"  # too large for this machine
    assert user_message(ConfigError("")) == "ConfigError"
