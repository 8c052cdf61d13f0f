"""Fixtures shared by several test files."""
import pytest

from sed.synthetic import generate


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """8 training and 3 validation images of the shapes family at 64 px (sed/synthetic.py)."""
    return generate(tmp_path_factory.mktemp("tiny_coco"), num_train=8, num_val=3, seed=0, image_size=64)
