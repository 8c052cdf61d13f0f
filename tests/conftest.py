"""Fixtures shared by several test files."""
import shutil

import pytest

from sed.synthetic import generate


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """8 training and 3 validation images of the shapes family at 64 px (sed/synthetic.py)."""
    return generate(tmp_path_factory.mktemp("tiny_coco"), num_train=8, num_val=3, seed=0, image_size=64)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """A folder for one test file's shared checkpoints, removed when the file's tests end: a
    checkpoint is about 110 MB (216 with optimizer state), and pyproject.toml's retention policy
    removes only the per-test folders."""
    path = tmp_path_factory.mktemp("module")
    yield path
    shutil.rmtree(path, ignore_errors=True)
