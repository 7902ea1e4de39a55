"""Tiny real tokenizers for the tests: a Hugging Face tokenizer.json (BPE, trained here) and a sentencepiece
model (trained here), each with explicit mask / end-of-sequence / padding tokens."""
import json
from pathlib import Path

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. And God said, Let there be light: and there was light. "
        "And God saw the light, that it was good: and God divided the light from the darkness. ") * 20

LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def write_hf_tokenizer(d: Path, mask="<|mdm_mask|>", with_template=True, declare_mask=False) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    specials = ["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", mask]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    cfg = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    if declare_mask:
        cfg["mask_token"] = mask
    if with_template:
        cfg["chat_template"] = LLADA_CHAT_TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def write_sp_tokenizer(d: Path) -> Path:
    import sentencepiece as spm

    d.mkdir(parents=True, exist_ok=True)
    (d / "corpus.txt").write_text(TEXT.replace(". ", ".\n"))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=300,
                                   model_type="unigram", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   user_defined_symbols=["<|mdm_mask|>"], byte_fallback=True, minloglevel=2,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    (d / "corpus.txt").unlink()
    (d / "tokenizer.vocab").unlink()
    return d
