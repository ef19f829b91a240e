//! What the benchmark binaries share.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs CMD with ARGS and returns its standard output, or an error naming the command and
/// quoting its standard error.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    checked(cmd, args, out)
}

/// [`run`], with INPUT on the command's standard input.
pub fn run_with_input(cmd: &str, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd}"))?;
    child
        .stdin
        .take()
        .with_context(|| format!("{cmd}'s standard input"))?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    checked(cmd, args, out)
}

fn checked(cmd: &str, args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
