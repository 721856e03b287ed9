"""The shared boundary checks of pipelines/errors.py."""

from __future__ import annotations

import pytest
import torch

from pipelines.errors import InputError, check_device_available, check_number


def test_a_device_must_be_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    check_device_available("--device", "auto")
    check_device_available("--device", "cpu")
    with pytest.raises(InputError, match="must be auto, cpu, cuda, cuda:N or mps"):
        check_device_available("--device", "tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"--device: cuda is not available here \(.*\); choose auto or cpu"):
        check_device_available("--device", "cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="mps is not available here; choose auto or cpu"):
        check_device_available("--device", "mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device_available("--device", "cuda")
    check_device_available("--device", "cuda:1")
    with pytest.raises(InputError, match=r"cuda:7 is not available here \(2 GPUs: cuda:0..cuda:1\)"):
        check_device_available("--device", "cuda:7")


def test_a_number_without_bounds_must_be_finite() -> None:
    check_number("x", -3.5)
    with pytest.raises(InputError, match="x must be a finite number, got nan"):
        check_number("x", float("nan"))
    with pytest.raises(InputError, match="x must be a number, got 'a'"):
        check_number("x", "a")
