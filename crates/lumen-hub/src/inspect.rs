//! What `lumen list` and `lumen show` print: facts read from a model's files without loading
//! its weights (the GGUF header and tensor table, or `config.json` and the safetensors
//! header).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use lumen_engine::registry::{ModelKind, ModelLocation};
use lumen_gguf::{GgufFile, Value};
use serde_json::Value as Json;

use crate::store::Store;

/// The facts about one installed model.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Its name.
    pub name: String,
    /// `chat` or `embedding`.
    pub kind: &'static str,
    /// `llama`, `bert`, ...
    pub architecture: String,
    /// `Q4_1`, `F32`, ... (the most common tensor type, by bytes).
    pub quantization: String,
    /// Parameters (tensor elements).
    pub parameters: u64,
    /// Bytes of every file in its folder.
    pub size_on_disk: u64,
    /// Longest sequence it takes.
    pub context_length: Option<u64>,
    /// The license, when the files or the manifest say.
    pub license: Option<String>,
    /// The chat template (GGUF `tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// Tokenizer model and vocabulary size.
    pub tokenizer: Option<String>,
    /// Selected metadata, key to printable value.
    pub metadata: BTreeMap<String, String>,
    /// Where its files are.
    pub path: PathBuf,
}

/// `1_234_567` parameters as `1.2M`.
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn printable(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) if s.len() <= 200 => s.clone(),
        Value::String(s) => format!("<{} bytes of text>", s.len()),
        Value::Array(a) => format!("<array of {}>", a.len()),
        Value::Bool(b) => b.to_string(),
        other => other
            .as_u64()
            .map(|n| n.to_string())
            .or_else(|| other.as_f64().map(|f| f.to_string()))?,
    })
}

fn from_gguf(path: &Path, s: &mut Summary) -> Result<(), String> {
    let f = GgufFile::open(path).map_err(|e| e.to_string())?;
    let md = f.metadata();
    s.architecture = md
        .get_str("general.architecture")
        .unwrap_or("?")
        .to_string();
    s.context_length = md
        .get(&format!("{}.context_length", s.architecture))
        .and_then(Value::as_u64);
    s.license = md
        .get("general.license")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    s.chat_template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let tok_model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let vocab = md
        .get_array("tokenizer.ggml.tokens")
        .map(|a| a.len())
        .unwrap_or(0);
    s.tokenizer = Some(format!("{tok_model}, {vocab} tokens"));
    let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in f.tensors() {
        s.parameters = s.parameters.saturating_add(t.n_elements);
        *by_type.entry(t.ggml_type.name()).or_default() += t.n_bytes;
    }
    s.quantization = by_type
        .iter()
        .max_by_key(|(_, b)| **b)
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    for (k, v) in md.iter() {
        if k.starts_with("tokenizer.ggml.") && k != "tokenizer.ggml.model"
            || k == "tokenizer.chat_template"
        {
            continue;
        }
        if let Some(p) = printable(v) {
            s.metadata.insert(k.to_string(), p);
        }
    }
    Ok(())
}

/// Reads only the JSON header of a safetensors file (its first 8 bytes say how long it is).
fn safetensors_header(path: &Path) -> Result<serde_json::Map<String, Json>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(format!(
            "safetensors header of {len} bytes is implausibly large"
        ));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| e.to_string())?;
    match serde_json::from_slice(&buf).map_err(|e| e.to_string())? {
        Json::Object(m) => Ok(m),
        _ => Err("safetensors header is not an object".into()),
    }
}

fn from_safetensors(dir: &Path, s: &mut Summary) -> Result<(), String> {
    let config: Json = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("config.json: {e}"))?;
    s.architecture = config["model_type"].as_str().unwrap_or("?").to_string();
    s.context_length = config["max_position_embeddings"].as_u64();
    if s.architecture == "mpnet" {
        // MPNet numbers positions from its padding id + 1 (fairseq's rule), so the first
        // `pad + 1` rows of the position table are never a token's: 514 rows, 512 tokens.
        let pad = config["pad_token_id"].as_u64().unwrap_or(1);
        s.context_length = s.context_length.map(|n| n.saturating_sub(pad + 1));
    }
    for key in [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    ] {
        if let Some(v) = config[key].as_u64() {
            s.metadata.insert(key.to_string(), v.to_string());
        }
    }
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for (name, t) in safetensors_header(&dir.join("model.safetensors"))? {
        let dtype = t["dtype"].as_str().unwrap_or("?");
        // Integer tensors are saved buffers (`position_ids`), not parameters.
        if name == "__metadata__" || dtype.starts_with('I') || dtype.starts_with('U') {
            continue;
        }
        let n: u64 = t["shape"]
            .as_array()
            .map(|d| d.iter().filter_map(Json::as_u64).product())
            .unwrap_or(0);
        s.parameters = s.parameters.saturating_add(n);
        *by_type.entry(dtype.to_string()).or_default() += n;
    }
    s.quantization = by_type
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(t, _)| t)
        .unwrap_or_default();
    if let Ok(tj) = std::fs::read_to_string(dir.join("tokenizer.json")) {
        if let Ok(tj) = serde_json::from_str::<Json>(&tj) {
            let kind = tj["model"]["type"].as_str().unwrap_or("?");
            let vocab = tj["model"]["vocab"]
                .as_object()
                .map(|v| v.len())
                .unwrap_or(0);
            s.tokenizer = Some(format!("{kind}, {vocab} tokens"));
        }
    }
    Ok(())
}

/// Reads the facts about the model at `loc` (installed in `store`).
pub fn summarize(store: &Store, loc: &ModelLocation) -> Result<Summary, String> {
    let dir = store.model_dir(&loc.name);
    let mut s = Summary {
        name: loc.name.clone(),
        size_on_disk: dir_size(&dir),
        path: loc.path.clone(),
        ..Default::default()
    };
    match loc.kind {
        ModelKind::Chat => {
            s.kind = "chat";
            from_gguf(&loc.path, &mut s)?;
        }
        ModelKind::Embedding => {
            s.kind = "embedding";
            from_safetensors(&loc.path, &mut s)?;
        }
    }
    if let Some(m) = store.manifest(&loc.name) {
        if s.license.is_none() {
            s.license = m.license;
        }
        s.metadata.insert("lumen.source".into(), m.source);
        if !m.sha256.is_empty() {
            s.metadata.insert("lumen.sha256".into(), m.sha256);
        }
    }
    if s.license.is_none() {
        s.license = ["LICENSE", "LICENSE.txt", "LICENSE.md"]
            .iter()
            .find(|f| dir.join(f).is_file())
            .map(|f| format!("see {}", dir.join(f).display()));
    }
    Ok(s)
}
