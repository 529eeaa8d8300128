"""``--device``: resolved and checked before any work; CPU runs are unchanged by it."""

import pytest
import torch

from dass.errors import DassError
from dass.runtime.device import resolve_device, to_device
from dass.search import make_config
from tests_helpers import run_cli


def test_resolve_device_accepts_cpu_and_refuses_bad_or_absent_devices():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(DassError, match="cpu, cuda, cuda:N or mps"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DassError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(DassError, match="device"):
        make_config("default", sets=["device=tpu"])


def test_to_device_keeps_cpu_tensors_and_structure():
    x, y = torch.randn(2, 3), torch.arange(2)
    moved = to_device(((x, y), [x]), torch.device("cpu"))
    assert moved[0][0] is x and moved[0][1] is y and moved[1][0] is x


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cli_device_errors_are_one_line():
    for args in (["search", "--device", "cuda", "--epochs", "1"], ["bench", "--model", "resnet18", "--sparsity", "0.9",
                                                                   "--device", "cuda"]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("dass: error:") and "Traceback" not in result.stderr
