"""The tiny teacher model folder, built once per session for the generation tests."""

from __future__ import annotations

import pytest

from tests.generation.server import tiny_teacher


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("tiny-teacher"))
