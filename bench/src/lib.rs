//! What the benchmark binaries share.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Runs CMD with ARGS and returns its standard output, or an error naming the command and
/// quoting its standard error.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
