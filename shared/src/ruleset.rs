//! A daemon's own iptables chains with their exact rules, and the jumps to them from built-in
//! chains: compared with what `iptables-save` prints, and repaired in one `iptables-restore
//! --noflush` transaction that rewrites only the chains that differ and adds only the missing
//! jumps. Rules are written in the form `iptables-save` prints them, so the comparison is line
//! for line. Nothing outside the named chains is touched, except the jumps.

use crate::iptables::{Iptables, IptablesError};
use std::collections::{BTreeMap, BTreeSet};

/// One chain of ours and its rules (each as it follows `-A CHAIN ` in `iptables-save`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub table: &'static str,
    pub name: &'static str,
    pub rules: Vec<String>,
}

/// An unconditional jump from a built-in chain to one of ours (`-A FROM -j TO`), put first in
/// `FROM` when it is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

/// Chains and jumps that must exist exactly so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
    pub jumps: Vec<Jump>,
}

/// What `iptables-save` shows of one table: the rules of each chain, in order.
#[derive(Debug, Default)]
struct Saved {
    chains: BTreeMap<String, Vec<String>>,
}

fn parse(saved: &str) -> Saved {
    let mut s = Saved::default();
    for line in saved.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                s.chains.entry(name.to_string()).or_default();
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
            s.chains
                .entry(chain.to_string())
                .or_default()
                .push(rest.to_string());
        }
    }
    s
}

impl Ruleset {
    /// The tables the ruleset uses.
    pub fn tables(&self) -> BTreeSet<&'static str> {
        self.chains
            .iter()
            .map(|c| c.table)
            .chain(self.jumps.iter().map(|j| j.table))
            .collect()
    }

    /// The restore input that repairs `table` given what `iptables-save -t TABLE` printed, or
    /// `None` when it already holds exactly our chains and every jump.
    pub fn repair(&self, table: &str, saved: &str) -> Option<String> {
        let saved = parse(saved);
        let mut out = String::new();
        let stale: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.table == table && saved.chains.get(c.name) != Some(&c.rules))
            .collect();
        let missing: Vec<&Jump> = self
            .jumps
            .iter()
            .filter(|j| {
                j.table == table
                    && !saved
                        .chains
                        .get(j.from)
                        .is_some_and(|rules| rules.contains(&format!("-j {}", j.to)))
            })
            .collect();
        if stale.is_empty() && missing.is_empty() {
            return None;
        }
        out.push_str(&format!("*{table}\n"));
        // Declaring a chain creates it, or flushes it for the rules that follow.
        for c in &stale {
            out.push_str(&format!(":{} - [0:0]\n", c.name));
        }
        for c in &stale {
            for r in &c.rules {
                out.push_str(&format!("-A {} {r}\n", c.name));
            }
        }
        for j in &missing {
            out.push_str(&format!("-I {} -j {}\n", j.from, j.to));
        }
        out.push_str("COMMIT\n");
        Some(out)
    }

    /// Makes the kernel hold exactly the ruleset (one `iptables-save` per table, and one
    /// `iptables-restore` when something differs). Returns the tables that were repaired.
    pub fn ensure(&self, ipt: &Iptables) -> Result<Vec<&'static str>, IptablesError> {
        let mut repaired = Vec::new();
        for table in self.tables() {
            let saved = ipt.save(table)?;
            if let Some(input) = self.repair(table, &saved) {
                ipt.restore(&input)?;
                repaired.push(table);
            }
        }
        Ok(repaired)
    }

    /// Deletes every jump to our chains (each copy) and then the chains; returns whether
    /// anything was there.
    pub fn remove(&self, ipt: &Iptables) -> Result<bool, IptablesError> {
        let mut removed = false;
        for j in &self.jumps {
            while ipt.delete_rule(j.table, j.from, &["-j", j.to])? {
                removed = true;
            }
        }
        // Chains of ours may jump to each other: flush them all before deleting any.
        for table in self.tables() {
            let saved = parse(&ipt.save(table)?);
            let ours: Vec<&Chain> = self
                .chains
                .iter()
                .filter(|c| c.table == table && saved.chains.contains_key(c.name))
                .collect();
            if ours.is_empty() {
                continue;
            }
            let mut input = format!("*{table}\n");
            for c in &ours {
                input.push_str(&format!(":{} - [0:0]\n", c.name));
            }
            for c in &ours {
                input.push_str(&format!("-X {}\n", c.name));
            }
            input.push_str("COMMIT\n");
            ipt.restore(&input)?;
            removed = true;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset() -> Ruleset {
        Ruleset {
            chains: vec![
                Chain {
                    table: "nat",
                    name: "OURS-A",
                    rules: vec!["-j OURS-B".into()],
                },
                Chain {
                    table: "nat",
                    name: "OURS-B",
                    rules: vec!["-j MASQUERADE --random-fully".into()],
                },
            ],
            jumps: vec![Jump {
                table: "nat",
                from: "POSTROUTING",
                to: "OURS-A",
            }],
        }
    }

    #[test]
    fn in_sync_needs_nothing_and_only_what_differs_is_rewritten() {
        let good = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:OURS-A - [0:0]\n:OURS-B - [0:0]\n-A POSTROUTING -s 10.0.0.0/24 -j CNIB-X\n-A POSTROUTING -j OURS-A\n-A OURS-A -j OURS-B\n-A OURS-B -j MASQUERADE --random-fully\nCOMMIT\n";
        assert_eq!(ruleset().repair("nat", good), None);
        let edited = good.replace(
            "-A OURS-B -j MASQUERADE --random-fully\n",
            "-A OURS-B -j MASQUERADE\n-A OURS-B -j ACCEPT\n",
        );
        assert_eq!(
            ruleset().repair("nat", &edited).unwrap(),
            "*nat\n:OURS-B - [0:0]\n-A OURS-B -j MASQUERADE --random-fully\nCOMMIT\n"
        );
        let jumpless = good.replace("-A POSTROUTING -j OURS-A\n", "");
        assert_eq!(
            ruleset().repair("nat", &jumpless).unwrap(),
            "*nat\n-I POSTROUTING -j OURS-A\nCOMMIT\n"
        );
        let empty = "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            ruleset().repair("nat", empty).unwrap(),
            "*nat\n:OURS-A - [0:0]\n:OURS-B - [0:0]\n-A OURS-A -j OURS-B\n-A OURS-B -j MASQUERADE --random-fully\n-I POSTROUTING -j OURS-A\nCOMMIT\n"
        );
        assert_eq!(
            ruleset().repair("filter", empty),
            None,
            "nothing of ours there"
        );
    }
}
