"""qwenvl.device: dtype choice and the process-wide attention backend switch for packed training on CUDA."""
import pytest
import torch

from qwenvl.device import auto_dtype, cpu_has_fast_bf16, varlen_friendly_sdpa


@pytest.fixture
def cudnn_flag():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


def test_cuda_turns_cudnn_attention_off(cudnn_flag, monkeypatch):
    monkeypatch.delenv("QWENVL_CUDNN_SDPA", raising=False)
    assert varlen_friendly_sdpa("cuda") is True
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    # the other backends stay as they were
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


def test_cpu_and_opt_out_leave_it_alone(cudnn_flag, monkeypatch):
    monkeypatch.delenv("QWENVL_CUDNN_SDPA", raising=False)
    assert varlen_friendly_sdpa(torch.device("cpu")) is False
    assert torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.setenv("QWENVL_CUDNN_SDPA", "1")
    assert varlen_friendly_sdpa("cuda:0") is False
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_auto_dtype_on_cpu():
    assert auto_dtype("cpu", torch.float32) == torch.float32
    want = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert auto_dtype("cpu", torch.bfloat16) == want
    assert auto_dtype("cpu", torch.float16) == want  # fp16 is never the CPU path
