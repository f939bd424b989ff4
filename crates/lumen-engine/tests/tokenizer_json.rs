//! `Tokenizer::from_tokenizer_json` on the all-MiniLM-L6-v2 embedding model's tokenizer.
//! Passes with a note when the model directory is not present.

use std::path::PathBuf;

use lumen_engine::Tokenizer;

fn tokenizer_json() -> Option<PathBuf> {
    let home = std::env::var_os("LUMEN_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".lumen")))?;
    let path = home.join("models/all-minilm-l6-v2/tokenizer.json");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("note: {} not found; skipping", path.display());
        None
    }
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
