"""Infilling from the command line: the prompt with its masks filled, then the generation, also through a chat
template whose end-of-turn token sits between the two."""
import json
import subprocess
import sys

import pytest

import illada_rt
from illada_rt.synthetic import TinySpec, write_checkpoint
from illada_rt.tokenizer import Tokenizer
from tokenizer_fixtures import write_hf_tokenizer

ARGS = ["--gen-length", "8", "--steps", "8", "--block-length", "8"]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat") / "m"
    write_hf_tokenizer(d)
    tok = Tokenizer(d)
    write_checkpoint(d, TinySpec(layout="llama", tied=True, vocab_size=tok.vocab_size, mask_token_id=None,
                                 quiet_token=tok.mask_token_id, seed=8))
    return d


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "illada_rt.cli", "generate", *args], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("chat", [False, True])
def test_infilling_prints_the_filled_prompt_then_the_answer(chat_dir, chat):
    prompt = "And God said, Let there be<|mdm_mask|><|mdm_mask|>: and there was light."
    m = illada_rt.load(chat_dir)
    g = m.generate(prompt, gen_length=8, steps=8, block_length=8, chat=chat)
    assert g.text                                                  # the model does generate something
    printed = _cli(prompt, "--model", str(chat_dir), *ARGS, *(["--chat"] if chat else []))
    out = json.loads(_cli(prompt, "--model", str(chat_dir), *ARGS, "--json", *(["--chat"] if chat else [])))
    filled = m.tokenizer.decode(out["filled_prompt_ids"], skip_special_tokens=True)
    assert "<|mdm_mask|>" not in printed and printed.rstrip("\n") == out["text"]
    assert out["text"].startswith(filled)                          # the whole filled prompt, template included
    assert out["text"].endswith(g.text) and len(out["text"]) > len(filled)   # ... and then the answer
