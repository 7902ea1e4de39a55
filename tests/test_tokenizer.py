"""Tokenizers (HF tokenizer.json and sentencepiece), special tokens, chat templates, text generation."""
import json

import pytest
import torch

import illada_rt
from illada_rt.errors import ConfigError
from illada_rt.synthetic import TinySpec, write_checkpoint
from illada_rt.tokenizer import Tokenizer, load_tokenizer
from tokenizer_fixtures import write_hf_tokenizer, write_sp_tokenizer

SAMPLES = ["In the beginning God created the heaven and the earth.", "And God said, Let there be light",
           "  spaces  and\nnewlines\t", "unseen wørds: ünïcode 12345 ✓"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_hf_tokenizer(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    return write_sp_tokenizer(tmp_path_factory.mktemp("sp"))


@pytest.mark.parametrize("which", ["hf", "sp"])
@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(which, text, hf_dir, sp_dir):
    tok = Tokenizer(hf_dir if which == "hf" else sp_dir)
    ids = tok.encode(text)
    assert ids and all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    if text.isascii():  # per-token surface text (for live rendering) splits multi-byte characters
        assert "".join(tok.token_text(i) for i in ids).strip() == text.strip()  # sp adds a leading space


def test_special_tokens_by_name(hf_dir, sp_dir):
    hf = Tokenizer(hf_dir)
    assert hf.backend == "tokenizers"
    assert hf.mask_token_id == hf.token_to_id("<|mdm_mask|>")   # found by LLaDA's mask name
    assert hf.id("eot") == hf.token_to_id("<|eot_id|>")
    assert hf.eos_token_id == hf.token_to_id("<|endoftext|>")
    assert hf.stop_ids() == {hf.id("eos"), hf.id("eot")}
    sp = Tokenizer(sp_dir)
    assert sp.backend == "sentencepiece"
    assert (sp.id("pad"), sp.id("eos"), sp.mask_token_id) == (0, 3, 4)
    # the mask token written in text is one token: that is how infilling prompts are typed
    assert sp.mask_token_id in sp.encode("the <|mdm_mask|> of God")
    assert hf.mask_token_id in hf.encode("the <|mdm_mask|> of God")


def test_illada_mask_name(tmp_path):
    tok = Tokenizer(write_hf_tokenizer(tmp_path / "t", mask="<[MASK]>"))
    assert tok.mask_token_id == tok.token_to_id("<[MASK]>")


def test_skip_special_tokens(hf_dir):
    tok = Tokenizer(hf_dir)
    ids = [tok.id("bos")] + tok.encode("And God said") + [tok.id("eos")]
    assert tok.decode(ids, skip_special_tokens=True) == "And God said"
    assert "<|endoftext|>" in tok.decode(ids)


def test_chat_template(hf_dir):
    tok = Tokenizer(hf_dir)
    s = tok.apply_chat_template([{"role": "user", "content": "Who made light?"}])
    assert s == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWho made light?<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert not tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=False).endswith("\n\n")


def test_chat_template_is_sandboxed(tmp_path):
    d = write_hf_tokenizer(tmp_path / "t")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception) as e:
        Tokenizer(d).apply_chat_template([{"role": "user", "content": "x"}])
    assert "unsafe" in str(e.value).lower() or "attribute" in str(e.value).lower()


def test_missing_template_is_a_clear_error(sp_dir):
    with pytest.raises(ConfigError, match="no chat template"):
        Tokenizer(sp_dir).apply_chat_template([{"role": "user", "content": "x"}])


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ nope")
    with pytest.raises(ConfigError, match="tokenizer.json"):
        Tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a sentencepiece model"):
        Tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").unlink()
    assert load_tokenizer(tmp_path) is None


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A Llama-style (iLLaDA-like) checkpoint without mask_token_id in config.json, with an HF tokenizer."""
    d = tmp_path_factory.mktemp("tm") / "m"
    write_hf_tokenizer(d)
    vocab = Tokenizer(d).vocab_size
    mask = Tokenizer(d).mask_token_id
    write_checkpoint(d, TinySpec(layout="llama", n_kv_heads=2, tied=True, vocab_size=vocab, mask_token_id=None,
                                 quiet_token=mask, seed=3))
    return illada_rt.load(d)


def test_mask_id_comes_from_the_tokenizer(text_model):
    assert text_model.mask_token_id == text_model.tokenizer.token_to_id("<|mdm_mask|>")


def test_generate_from_text(text_model):
    g = text_model.generate("And God said", gen_length=8, steps=8, block_length=8)
    assert isinstance(g.text, str)
    ids = text_model.tokenizer.encode("And God said")
    assert g.tokens[0, :len(ids)].tolist() == ids
    assert g.text == text_model.decode_generation(g.generated[0])
    both = text_model.generate(["And God said", "In the beginning God"], gen_length=8, steps=8, block_length=8)
    assert isinstance(both.text, list) and len(both.text) == 2
    assert both.text[0] == g.text   # batch invariance through the text path (left padding)


def test_chat_generation_uses_template(text_model):
    tok = text_model.tokenizer
    g = text_model.generate("Who made light?", gen_length=8, steps=8, block_length=8, chat=True)
    want = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Who made light?"}]))
    assert g.tokens[0, :len(want)].tolist() == want
    with pytest.raises(ValueError, match="chat=True needs text prompts"):
        text_model.generate([[1, 2]], gen_length=8, steps=8, block_length=8, chat=True)


def test_text_stops_at_end_of_sequence(text_model):
    tok = text_model.tokenizer
    ids = tok.encode("light") + [tok.id("eot")] + tok.encode("darkness") + [tok.id("eos")]
    assert text_model.decode_generation(ids) == "light"


def test_text_without_tokenizer_is_a_clear_error(checkpoints):
    m = illada_rt.load(checkpoints["llada_mha"])
    assert m.tokenizer is None
    with pytest.raises(ValueError, match="has none; pass token ids"):
        m.generate("hello", gen_length=8, steps=8, block_length=8)
    assert m.generate([[1, 2]], gen_length=8, steps=8, block_length=8).text is None


def test_callback_sees_every_step(text_model):
    seen = []

    def cb(step, tokens, transferred):
        seen.append((step, tokens.clone(), transferred.clone()))

    g = text_model.generate("And God said", gen_length=8, steps=4, block_length=8, callback=cb)
    assert [s for s, _, _ in seen] == list(range(g.nfe))
    assert all(int(tr.sum()) == 2 for _, _, tr in seen)   # 8 tokens over 4 steps
    assert torch.equal(seen[-1][1], g.tokens)
    filled = torch.stack([tr for _, _, tr in seen]).sum(0)
    assert filled[0, -8:].tolist() == [1] * 8 and int(filled.sum()) == 8
    with pytest.raises(TypeError, match="callback"):
        text_model.generate("x", gen_length=8, steps=4, block_length=8, callback=3)


LLAMA2_CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + "
                        "' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")
TURNS = [{"role": "user", "content": "Who made light?"}, {"role": "assistant", "content": "God."},
         {"role": "user", "content": "And darkness?"}]


def test_chat_special_tokens_sentencepiece(tmp_path):
    """<s> / </s> rendered by a chat template are the control ids 2 / 3, not the characters spelled out."""
    import sentencepiece as spm

    d = write_sp_tokenizer(tmp_path / "sp")
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA2_CHAT_TEMPLATE}))
    tok = Tokenizer(d)
    text = tok.apply_chat_template(TURNS, add_generation_prompt=False)
    assert text == "<s>[INST] Who made light? [/INST] God.</s><s>[INST] And darkness? [/INST]"
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    want = [2] + sp.encode("[INST] Who made light? [/INST] God.") + [3, 2] + sp.encode("[INST] And darkness? [/INST]")
    assert tok.encode(text) == want
    assert tok.encode("the <|mdm_mask|> of God") == sp.encode("the <|mdm_mask|> of God")  # kept whole by sp itself


def test_chat_special_tokens_hf_vocabulary_only(tmp_path):
    """A tokenizer.json that has its declared BOS / EOS in the vocabulary but not among its added tokens: the
    rendered template's special tokens still map to their ids, as they do when they are added tokens."""
    from tokenizers import Tokenizer as HFTokenizer

    d = write_hf_tokenizer(tmp_path / "hf")
    reference = HFTokenizer.from_file(str(d / "tokenizer.json"))   # all specials are added tokens here
    j = json.loads((d / "tokenizer.json").read_text())
    j["added_tokens"] = [t for t in j["added_tokens"] if t["content"] not in ("<|startoftext|>", "<|endoftext|>")]
    (d / "tokenizer.json").write_text(json.dumps(j))
    tok = Tokenizer(d)
    text = tok.apply_chat_template(TURNS[:1]) + "God.<|endoftext|>"
    want = reference.encode(text, add_special_tokens=False).ids
    assert want[0] == j["model"]["vocab"]["<|startoftext|>"] and want[-1] == j["model"]["vocab"]["<|endoftext|>"]
    assert tok.encode(text) == want
    assert tok.vocab_size == reference.get_vocab_size(with_added_tokens=True)
    assert tok.decode(want, skip_special_tokens=True) == reference.decode(want, skip_special_tokens=True)
