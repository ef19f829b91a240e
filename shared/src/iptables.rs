//! The few static iptables rules, ensured by exec'ing `iptables -w` / `ip6tables -w`.
//!
//! Only for rules that are created once per network or per daemon: nothing per pod or per
//! endpoint goes through here (those live in ipsets).

use std::process::{Command, Output};

use crate::Family;

/// Errors from running iptables.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The binary could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` failed (exit {status}): {stderr}")]
    Failed {
        command: String,
        status: i32,
        stderr: String,
    },
}

/// Where a new rule goes in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// At the end (`-A`).
    Append,
    /// At the top (`-I`).
    Insert,
}

/// Runs `iptables -w` or `ip6tables -w` in the calling thread's network namespace.
#[derive(Debug, Clone)]
pub struct Iptables {
    program: &'static str,
    restore: &'static str,
}

impl Iptables {
    /// A runner for one family: `iptables` for IPv4, `ip6tables` for IPv6.
    pub fn new(family: Family) -> Iptables {
        match family {
            Family::V4 => Iptables {
                program: "iptables",
                restore: "iptables-restore",
            },
            Family::V6 => Iptables {
                program: "ip6tables",
                restore: "ip6tables-restore",
            },
        }
    }

    /// The program run: `iptables` or `ip6tables`.
    pub fn command(&self) -> &'static str {
        self.program
    }

    fn exec(&self, args: &[&str]) -> Result<Output, IptablesError> {
        Command::new(self.program)
            .arg("-w")
            .args(args)
            .output()
            .map_err(|source| IptablesError::Spawn {
                program: self.program,
                source,
            })
    }

    fn run(&self, args: &[&str]) -> Result<(), IptablesError> {
        let out = self.exec(args)?;
        if out.status.success() {
            return Ok(());
        }
        Err(IptablesError::Failed {
            command: format!("{} -w {}", self.program, args.join(" ")),
            status: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Applies `input` in one transaction (`iptables-restore -w --noflush`): chains it declares
    /// are created or flushed and refilled atomically; nothing else is touched.
    pub fn restore(&self, input: &str) -> Result<(), IptablesError> {
        use std::io::Write;
        let mut child = Command::new(self.restore)
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| IptablesError::Spawn {
                program: self.restore,
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A restore that exits early reports why on stderr, read below.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| IptablesError::Spawn {
                program: self.restore,
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(IptablesError::Failed {
            command: format!("{} -w --noflush <<< {input:?}", self.restore),
            status: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// The rules of one table as `iptables-save -t TABLE` prints them.
    pub fn save(&self, table: &str) -> Result<String, IptablesError> {
        let save = match self.program {
            "ip6tables" => "ip6tables-save",
            _ => "iptables-save",
        };
        let out = Command::new(save)
            .args(["-t", table])
            .output()
            .map_err(|source| IptablesError::Spawn {
                program: save,
                source,
            })?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                command: format!("{save} -t {table}"),
                status: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether a chain exists (`iptables -t TABLE -S CHAIN 1`).
    pub fn chain_exists(&self, table: &str, chain: &str) -> Result<bool, IptablesError> {
        Ok(self
            .exec(&["-t", table, "-S", chain, "1"])?
            .status
            .success())
    }

    /// Creates a chain unless it exists (`iptables -t TABLE -N CHAIN`); returns whether it was
    /// created now.
    pub fn ensure_chain(&self, table: &str, chain: &str) -> Result<bool, IptablesError> {
        if self.chain_exists(table, chain)? {
            return Ok(false);
        }
        match self.run(&["-t", table, "-N", chain]) {
            Ok(()) => Ok(true),
            // A racing peer created it between our check and our create.
            Err(_) if self.chain_exists(table, chain)? => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a rule exists (`iptables -t TABLE -C CHAIN RULE...`).
    pub fn rule_exists(
        &self,
        table: &str,
        chain: &str,
        rule: &[&str],
    ) -> Result<bool, IptablesError> {
        let mut args = vec!["-t", table, "-C", chain];
        args.extend_from_slice(rule);
        Ok(self.exec(&args)?.status.success())
    }

    /// Adds a rule unless it exists (`-C`, then `-A` or `-I`); returns whether it was added now.
    pub fn ensure_rule(
        &self,
        table: &str,
        chain: &str,
        rule: &[&str],
        position: Position,
    ) -> Result<bool, IptablesError> {
        if self.rule_exists(table, chain, rule)? {
            return Ok(false);
        }
        let verb = match position {
            Position::Append => "-A",
            Position::Insert => "-I",
        };
        let mut args = vec!["-t", table, verb, chain];
        args.extend_from_slice(rule);
        self.run(&args)?;
        Ok(true)
    }

    /// Deletes a rule if present (`iptables -t TABLE -D CHAIN RULE...`); returns whether it was
    /// there.
    pub fn delete_rule(
        &self,
        table: &str,
        chain: &str,
        rule: &[&str],
    ) -> Result<bool, IptablesError> {
        if !self.rule_exists(table, chain, rule)? {
            return Ok(false);
        }
        let mut args = vec!["-t", table, "-D", chain];
        args.extend_from_slice(rule);
        self.run(&args)?;
        Ok(true)
    }

    /// Flushes and deletes a chain if present (`-F CHAIN`, `-X CHAIN`); returns whether it was
    /// there. Rules elsewhere that jump to it must be deleted first.
    pub fn delete_chain(&self, table: &str, chain: &str) -> Result<bool, IptablesError> {
        if !self.chain_exists(table, chain)? {
            return Ok(false);
        }
        self.run(&["-t", table, "-F", chain])?;
        self.run(&["-t", table, "-X", chain])?;
        Ok(true)
    }
}
