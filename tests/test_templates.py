"""Recovering the plain conversation from prompts that chat templates already rendered (reward/templates.py):
each known format, the system turns templates add by themselves, end tokens, and strings that must stay as given."""

import pytest

from micro.reward.templates import plain_row, split_query

CONV = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "why is the sky blue?"}]

RENDERED = {
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
               "be brief<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
               "hello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nwhy is the sky blue?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    "chatml": ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
               "<|im_start|>user\nwhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n", "<|im_end|><|endoftext|>"),
    "phi3": ("<|system|>\nbe brief<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n<|user|>\nwhy is the sky blue?<|end|>\n"
             "<|assistant|>\n", "<|end|><|endoftext|>"),
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_a_rendered_conversation_comes_back_plain(name):
    prompt, eos = RENDERED[name]
    assert plain_row(prompt, "Rayleigh scattering." + eos) == (CONV, "Rayleigh scattering.")
    assert split_query(prompt + "Rayleigh scattering." + eos) == (prompt, "Rayleigh scattering." + eos)


def test_template_added_system_turns_are_dropped_and_one_user_turn_is_a_string():
    llama = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024"
             "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhow?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    qwen = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nhow?<|im_end|>\n<|im_start|>assistant\n")
    gemma = "<bos><start_of_turn>user\nhow?<end_of_turn>\n<start_of_turn>model\n"
    for prompt in (llama, qwen, gemma):
        assert plain_row(prompt, "so.") == ("how?", "so.")


@pytest.mark.parametrize("prompt", ["How do I sort a list?", "Explain <|im_start|>user\nhi<|im_end|> tokens",
                                    "<|im_start|>user\nhi<|im_end|>\n",  # no generation header: not a prompt to answer
                                    "text before <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"])
def test_plain_prompts_are_left_as_given(prompt):
    assert plain_row(prompt, "r<|im_end|>") == (prompt, "r<|im_end|>")
    assert plain_row([{"role": "user", "content": "x"}], "r") == ([{"role": "user", "content": "x"}], "r")
