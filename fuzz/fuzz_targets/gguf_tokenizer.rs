//! Fuzzes tokenizer construction from GGUF metadata: any file must give a tokenizer or
//! an error, never a panic, an abort or unbounded work; a tokenizer that builds must
//! encode and decode a sample text.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run gguf_tokenizer` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lumen_engine::tokenizer::Tokenizer;
use lumen_gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let Ok(tok) = Tokenizer::from_gguf(file.metadata()) else {
        return;
    };
    if let Ok(ids) = tok.encode("Hello, world! <|im_start|> 123", true, true) {
        let _ = tok.decode(&ids, false);
    }
});
