//! `lumen pull`, `lumen list`, `lumen show` and `lumen rm` (the logic is in `lumen-hub`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use lumen_engine::registry::{list as installed, lumen_home, resolve};
use lumen_hub::inspect::{human_count, summarize};
use lumen_hub::progress::human_bytes;
use lumen_hub::pull::Pulled;
use lumen_hub::{catalog, import, pull, Store};

/// Flags of `lumen pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Catalog names (`smollm2`), or one path to a `.gguf` file or a safetensors folder.
    #[arg(required_unless_present = "list")]
    pub names: Vec<String>,
    /// The name a local file or folder is installed under (default: its file stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Hard-link a local file instead of copying it (when on the same file system).
    #[arg(long)]
    pub link: bool,
    /// Print the catalog instead of pulling.
    #[arg(long)]
    pub list: bool,
}

fn say(line: String) {
    eprintln!("lumen: {line}");
}

/// Whether `arg` means a local path rather than a catalog name (a catalog name wins over a
/// same-named file in the current folder; write `./NAME` for the file).
fn is_path(arg: &str) -> bool {
    arg.contains('/')
        || arg.ends_with(".gguf")
        || (catalog::find(arg).is_none() && Path::new(arg).exists())
}

/// `lumen pull`.
pub fn pull(args: PullArgs) -> Result<()> {
    if args.list {
        for e in catalog::CATALOG {
            println!(
                "{:<20} {:<10} {:<28} {}",
                e.name,
                kind_name(e.kind),
                e.requirement(),
                e.description
            );
        }
        return Ok(());
    }
    let store = Store::new(lumen_home());
    if args.names.len() == 1 && is_path(&args.names[0]) {
        let src = Path::new(&args.names[0]);
        let name = match &args.name {
            Some(n) => n.clone(),
            None => src
                .file_stem()
                .map(|s| s.to_string_lossy().to_lowercase())
                .context("cannot derive a name from the path; pass --name")?,
        };
        let dir = import::import(&store, src, &name, args.link, &mut say)?;
        say(format!("{name} ready in {}", dir.display()));
        return Ok(());
    }
    if args.name.is_some() || args.link {
        bail!("--name and --link apply to importing one local file or folder");
    }
    for name in &args.names {
        if is_path(name) {
            bail!("'{name}' is a path: import local models one at a time with --name");
        }
        let entry =
            catalog::find(name).ok_or_else(|| lumen_hub::HubError::NotInCatalog(name.clone()))?;
        match pull::pull(&store, entry, &mut say)? {
            Pulled::AlreadyPresent => say(format!(
                "{name} already present in {}",
                store.model_dir(name).display()
            )),
            Pulled::Installed => say(format!(
                "{name} ready in {}",
                store.model_dir(name).display()
            )),
        }
    }
    Ok(())
}

fn kind_name(k: lumen_engine::registry::ModelKind) -> &'static str {
    match k {
        lumen_engine::registry::ModelKind::Chat => "chat",
        lumen_engine::registry::ModelKind::Embedding => "embedding",
    }
}

/// `lumen list`.
pub fn list() -> Result<()> {
    let store = Store::new(lumen_home());
    let models = installed(store.home());
    if models.is_empty() {
        println!(
            "no models in {} (fetch one with `lumen pull smollm2`; `lumen pull --list` shows the catalog)",
            store.models_dir().display()
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:<10} {:<8} {:>8} {:>10} {:>8}",
        "NAME", "KIND", "ARCH", "QUANT", "PARAMS", "SIZE", "CONTEXT"
    );
    for m in models {
        match summarize(&store, &m) {
            Ok(s) => println!(
                "{:<24} {:<10} {:<10} {:<8} {:>8} {:>10} {:>8}",
                s.name,
                s.kind,
                s.architecture,
                s.quantization,
                human_count(s.parameters),
                human_bytes(s.size_on_disk),
                s.context_length
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
            Err(e) => println!("{:<24} unreadable: {e}", m.name),
        }
    }
    Ok(())
}

/// `lumen show NAME`.
pub fn show(name: &str) -> Result<()> {
    let store = Store::new(lumen_home());
    lumen_hub::store::check_name(name)?;
    let loc = resolve(name, store.home())?;
    let s = summarize(&store, &loc).map_err(anyhow::Error::msg)?;
    println!("name:           {}", s.name);
    println!("kind:           {}", s.kind);
    println!("architecture:   {}", s.architecture);
    println!("quantization:   {}", s.quantization);
    println!(
        "parameters:     {} ({})",
        human_count(s.parameters),
        s.parameters
    );
    println!("size on disk:   {}", human_bytes(s.size_on_disk));
    println!(
        "context length: {}",
        s.context_length
            .map(|c| c.to_string())
            .unwrap_or_else(|| "?".into())
    );
    println!("tokenizer:      {}", s.tokenizer.as_deref().unwrap_or("?"));
    println!(
        "license:        {}",
        s.license.as_deref().unwrap_or("(not stated)")
    );
    println!("path:           {}", s.path.display());
    println!("metadata:");
    for (k, v) in &s.metadata {
        println!("  {k}: {v}");
    }
    if let Some(t) = &s.chat_template {
        println!("chat template:\n{t}");
    }
    Ok(())
}

/// `lumen rm NAME`.
pub fn rm(names: &[String]) -> Result<()> {
    let store = Store::new(lumen_home());
    for name in names {
        let dir = store.remove(name)?;
        say(format!("removed {name} ({})", dir.display()));
    }
    Ok(())
}
