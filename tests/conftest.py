import os

import pytest
import torch

# Tests never reach a model hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random CLIP saved with `save_pretrained` (the CLI, index and web-app tests' model)."""
    import vlkit  # after HF_HUB_OFFLINE is set above

    directory = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    vlkit.create_model("tiny").save_pretrained(directory)
    return directory
