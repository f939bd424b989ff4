//! Lumen's tokenizer against llama.cpp on the real SmolLM2 vocabulary.
//!
//! The fixture was written by `scripts/make_tokenizer_fixture.py` (llama-cpp-python).
//! The test passes with a note when the model file is not present (fails under `CI`; see
//! `lumen_testkit`).

use std::sync::Arc;

use lumen_engine::{GgufVocab, IncrementalDecoder, Tokenizer};
use serde_json::Value;

fn open() -> Option<lumen_gguf::GgufFile> {
    let path = lumen_testkit::chat_gguf()?;
    Some(lumen_gguf::GgufFile::open(&path).expect("model opens"))
}

fn load() -> Option<Tokenizer> {
    Some(Tokenizer::from_gguf(open()?.metadata()).expect("tokenizer builds"))
}

fn fixture() -> Value {
    let text = include_str!("fixtures/smollm2_tokens.json");
    serde_json::from_str(text).expect("fixture parses")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn vocabulary_facts_match_llama_cpp() {
    let Some(tok) = load() else { return };
    let fx = fixture();
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos_id().map(u64::from), fx["bos"].as_u64());
    assert_eq!(tok.eos_id().map(u64::from), fx["eos"].as_u64());
    assert_eq!(tok.eot_id().map(u64::from), fx["eot"].as_u64());
    assert_eq!(tok.adds_bos(), fx["add_bos"].as_bool().unwrap());
    assert_eq!(tok.eog_ids(), ids(&fx["eog"]).as_slice());
}

#[test]
fn encoding_matches_llama_cpp() {
    let Some(tok) = load() else { return };
    let fx = fixture();
    let mut failures = Vec::new();
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let parse_special = case["parse_special"].as_bool().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, false, parse_special).unwrap();
        if got != want {
            failures.push(format!(
                "{text:?} (special={parse_special}): llama.cpp {want:?}, lumen {got:?}"
            ));
        }
        let want_special = ids(&case["ids_add_special"]);
        let got_special = tok.encode(text, true, parse_special).unwrap();
        if got_special != want_special {
            failures.push(format!(
                "{text:?} with add_special: llama.cpp {want_special:?}, lumen {got_special:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn other_pre_tokenizers_match_llama_cpp() {
    let Some(file) = open() else { return };
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for (pre, want_all) in fx["pre_variants"].as_object().unwrap() {
        // The fixture's files had no add_bos_token etc., so each pre's defaults apply.
        let mut v = GgufVocab::from_metadata(file.metadata()).unwrap();
        v.pre = Some(pre.clone());
        v.add_bos = None;
        v.add_eos = None;
        v.add_space_prefix = None;
        let tok = Tokenizer::from_vocab(v).unwrap();
        for (case, want) in cases.iter().zip(want_all.as_array().unwrap()) {
            let text = case["text"].as_str().unwrap();
            let got = tok
                .encode(text, true, case["parse_special"].as_bool().unwrap())
                .unwrap();
            if got != ids(want) {
                failures.push(format!(
                    "[{pre}] {text:?}: llama.cpp {:?}, lumen {got:?}",
                    ids(want)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn decoding_round_trips_and_matches_llama_cpp() {
    let Some(tok) = load() else { return };
    let tok = Arc::new(tok);
    let fx = fixture();
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let decoded = tok.decode(&want, false).unwrap();
        assert_eq!(decoded, text, "round trip");
        assert_eq!(
            decoded,
            case["detokenized"].as_str().unwrap(),
            "llama.cpp detokenize"
        );
        // Streaming one token at a time gives the same text.
        let mut dec = IncrementalDecoder::new(Arc::clone(&tok), false);
        let mut streamed = String::new();
        for &id in &want {
            streamed.push_str(&dec.push(id));
        }
        streamed.push_str(&dec.flush());
        assert_eq!(streamed, text, "incremental decode");
    }
}

#[test]
fn chat_template_from_the_model_renders_chatml() {
    let Some(file) = open() else { return };
    let tok = Tokenizer::from_gguf(file.metadata()).unwrap();
    let tpl = lumen_engine::ChatTemplate::from_metadata(file.metadata(), &tok).unwrap();
    let msgs = [lumen_engine::ChatMessage::new("user", "Hi")];
    let prompt = tpl.render(&msgs, true, None).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\n"));
    assert!(prompt.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    let ids = tok.encode(&prompt, false, true).unwrap();
    assert_eq!(
        ids.iter().filter(|&&i| i == 1).count(),
        3,
        "three <|im_start|> tokens"
    );
}
