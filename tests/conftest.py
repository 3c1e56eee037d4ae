import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def ref_dir(tmp_path_factory):
    """A tiny reference checkpoint saved by transformers 4.51.3 (untied lm_head): (path, hf_model, cfg)."""
    from oracle import make_reference_dir

    path = tmp_path_factory.mktemp("ref_untied")
    model, tok, cfg = make_reference_dir(path, seed=0)
    return path, model, cfg


@pytest.fixture(scope="session")
def ref_dir_tied(tmp_path_factory):
    from oracle import make_reference_dir

    path = tmp_path_factory.mktemp("ref_tied")
    model, tok, cfg = make_reference_dir(path, seed=1, tie_word_embeddings=True)
    return path, model, cfg


@pytest.fixture(scope="session")
def parrot_dir(tmp_path_factory):
    """A tiny checkpoint trained to give known answers (a box list, a tool call): tests/serve_util.py."""
    from serve_util import make_parrot_checkpoint

    return make_parrot_checkpoint(tmp_path_factory.mktemp("parrot"))
