import os

import pytest

# Triton reads this at import: every kernel test runs under the interpreter on the CPU.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """A 3-step stage-0 ViT and LM (tests/test_train.py's quick settings): something for --init."""
    from lab.train import train
    from tests.test_train import cfg

    root = tmp_path_factory.mktemp("stage0")
    train(cfg("vision", 3), root / "vision", progress=False)
    train(cfg("lm", 3), root / "lm", progress=False)
    return root


# LLaVA records and image checks are cached per user (lab.data.llava.cache_root); the tests keep theirs apart.
if "LAB_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["LAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="lab-test-cache-")
