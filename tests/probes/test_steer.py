"""Steering hooks touch exactly the last prompt token (right-padded rows) and each decoded token; answer parsing;
the expected-direction rate."""

from __future__ import annotations

import numpy as np
import torch

from lmlab.probes.steer import _bind, add_direction, moved_rate, parse_answer


def test_hook_adds_alpha_v_at_last_real_token_only(tiny):
    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    ids = torch.tensor([rows[0], rows[1] + [0, 0]])
    u = np.zeros(32)
    u[3] = 1.0
    hooks = _bind(add_direction({1: u}, 2.5, torch.float32, torch.device("cpu")), [5, 3])
    with torch.inference_mode():
        clean = tiny(
            ids, tiny.new_cache(2, 8), num_tokens=[5, 3], output_hidden_states=True, logits="none"
        ).hidden_states
        cache = tiny.new_cache(2, 8)
        steer = tiny(ids, cache, num_tokens=[5, 3], output_hidden_states=True, logits="none", hooks=hooks).hidden_states
        diff = steer[1] - clean[1]  # hidden state 1 = block 0's output, where the hook for layer 1 acts
        expect = torch.zeros_like(diff)
        expect[0, 4, 3] = expect[1, 2, 3] = 2.5
        torch.testing.assert_close(diff, expect)
        assert torch.equal(steer[2][0, :4], clean[2][0, :4])  # earlier positions untouched downstream too
        step = tiny(
            torch.tensor([[3], [4]]), cache, logits="none", output_hidden_states=True, hooks=hooks
        ).hidden_states
        ref_cache = tiny.new_cache(2, 8)
        tiny(ids, ref_cache, num_tokens=[5, 3], logits="none", hooks=hooks)
        ref = tiny(torch.tensor([[3], [4]]), ref_cache, logits="none", output_hidden_states=True).hidden_states
        torch.testing.assert_close(step[1] - ref[1], torch.tensor([[[0, 0, 0, 2.5] + [0] * 28]] * 2))


def test_parse_answer():
    assert parse_answer("87 + 57 = 134.") == 134
    assert parse_answer("1,234,567\nmore") == 1234567
    assert parse_answer("\n  The sum is 42") == 42
    assert parse_answer("2 + 3 = 5\n\nThe answer is: 7") == 5
    assert parse_answer("no idea") is None


def test_moved_rate():
    clean = [10, 10, 10, None, 10]
    assert moved_rate(clean, [11, 9, 10, 50, None], +1) == 0.2
    assert moved_rate(clean, [11, 9, 10, 50, 0], -1) == 0.2
