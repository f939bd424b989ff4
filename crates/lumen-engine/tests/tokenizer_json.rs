//! `Tokenizer::from_tokenizer_json` on the all-MiniLM-L6-v2 embedding model's tokenizer.
//! Passes with a note when the model directory is not present (fails under `CI`; see
//! `lumen_testkit`).

use std::path::PathBuf;

use lumen_engine::Tokenizer;

fn tokenizer_json() -> Option<PathBuf> {
    lumen_testkit::embedding_file("tokenizer.json")
}

#[test]
fn wordpiece_tokenizer_json_encodes_with_cls_and_sep() {
    let Some(path) = tokenizer_json() else { return };
    let tok = Tokenizer::from_tokenizer_json(&path).unwrap();
    assert_eq!(tok.vocab_size(), 30522);
    // BERT uncased: [CLS] hello world [SEP].
    assert_eq!(
        tok.encode("Hello world", true, true).unwrap(),
        vec![101, 7592, 2088, 102]
    );
    assert_eq!(
        tok.encode("Hello world", false, true).unwrap(),
        vec![7592, 2088]
    );
    assert_eq!(
        tok.decode(&[101, 7592, 2088, 102], true).unwrap(),
        "hello world"
    );
    assert!(tok.is_special(101) && !tok.is_special(7592));
    assert!(tok.decode(&[30522], false).is_err());
    assert!(Tokenizer::from_tokenizer_json(&path.with_file_name("no-such.json")).is_err());
}
