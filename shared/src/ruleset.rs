//! The one way our iptables rules are written: a daemon's or plugin's own chains with their exact
//! rules, and the jumps to them from built-in chains, compared with what `iptables-save` prints
//! and repaired in one `iptables-restore --noflush` transaction that rewrites only the chains that
//! differ, adds only the missing jumps and deletes extra copies of them. Rules are held in the
//! form `iptables-save` prints them ([`rule_line`]), so the comparison is line for line. Nothing
//! outside the named chains is touched, except the jumps.

use crate::iptables::{Iptables, IptablesError};
use std::collections::{BTreeMap, BTreeSet};

/// One chain of ours and its rules (each as it follows `-A CHAIN ` in `iptables-save`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub table: &'static str,
    pub name: String,
    pub rules: Vec<String>,
}

/// Where a missing jump is put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// First in the chain (`-I`): traffic reaches ours before anything else.
    First,
    /// Last in the chain (`-A`): after what others put there.
    Last,
}

/// A jump from a built-in chain to one of ours: `-A FROM RULE` where `rule` ends in `-j CHAIN`
/// and may match first (a set, a comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    /// The rule after `-A FROM `, in `iptables-save` form.
    pub rule: String,
    pub place: Place,
}

impl Jump {
    /// An unconditional jump, put first: `-A FROM -j TO`.
    pub fn to(table: &'static str, from: &'static str, to: &str) -> Jump {
        Jump {
            table,
            from,
            rule: format!("-j {to}"),
            place: Place::First,
        }
    }
}

/// Chains and jumps that must exist exactly so (each jump once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
    pub jumps: Vec<Jump>,
}

/// An argument that cannot be written in `iptables-restore` input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("iptables argument {0:?} cannot be quoted")]
pub struct Unquotable(pub String);

/// One rule's arguments in `iptables-save` form: an argument with a space is double-quoted (as
/// `iptables-save` prints a comment), one with a quote, backslash or newline is refused.
pub fn rule_line<S: AsRef<str>>(args: &[S]) -> Result<String, Unquotable> {
    let mut out = String::new();
    for arg in args {
        let arg = arg.as_ref();
        if arg.contains(['"', '\\', '\n', '\0']) || arg.is_empty() {
            return Err(Unquotable(arg.to_string()));
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if arg.contains(' ') {
            out.push('"');
            out.push_str(arg);
            out.push('"');
        } else {
            out.push_str(arg);
        }
    }
    Ok(out)
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

impl Saved {
    fn copies(&self, j: &Jump) -> usize {
        self.chains
            .get(j.from)
            .map_or(0, |rules| rules.iter().filter(|r| **r == j.rule).count())
    }
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

    /// How many of the rules match ipset `set` (`--match-set SET `): the kernel's reference count
    /// of the set when exactly these rules exist and nothing else uses it, so one netlink read
    /// of the set proves them present without an exec.
    pub fn set_references(&self, set: &str) -> u32 {
        let needle = format!("--match-set {set} ");
        let chains = self.chains.iter().flat_map(|c| &c.rules);
        let jumps = self.jumps.iter().map(|j| &j.rule);
        chains.chain(jumps).filter(|r| r.contains(&needle)).count() as u32
    }

    /// The restore input that repairs `table` given what `iptables-save -t TABLE` printed, or
    /// `None` when it already holds exactly our chains and each jump once.
    pub fn repair(&self, table: &str, saved: &str) -> Option<String> {
        let saved = parse(saved);
        let stale: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| c.table == table && saved.chains.get(&c.name) != Some(&c.rules))
            .collect();
        let jumps: Vec<(&Jump, usize)> = self
            .jumps
            .iter()
            .filter(|j| j.table == table)
            .map(|j| (j, saved.copies(j)))
            .filter(|(_, n)| *n != 1)
            .collect();
        if stale.is_empty() && jumps.is_empty() {
            return None;
        }
        let mut out = format!("*{table}\n");
        // Declaring a chain creates it, or flushes it for the rules that follow.
        for c in &stale {
            out.push_str(&format!(":{} - [0:0]\n", c.name));
        }
        for c in &stale {
            for r in &c.rules {
                out.push_str(&format!("-A {} {r}\n", c.name));
            }
        }
        for (j, copies) in &jumps {
            match (copies, j.place) {
                (0, Place::First) => out.push_str(&format!("-I {} {}\n", j.from, j.rule)),
                (0, Place::Last) => out.push_str(&format!("-A {} {}\n", j.from, j.rule)),
                // Extra copies (two writers raced): each `-D` deletes one.
                (n, _) => {
                    for _ in 1..*n {
                        out.push_str(&format!("-D {} {}\n", j.from, j.rule));
                    }
                }
            }
        }
        out.push_str("COMMIT\n");
        Some(out)
    }

    /// The first way `saved` differs from the ruleset, as [`repair`](Self::repair) would see it
    /// (for messages): a chain of ours missing or one of its rules missing
    /// (`missing: -t TABLE -A CHAIN RULE`), a rule in one of our chains that is not ours
    /// (`unexpected: ...`, e.g. left by an older configuration), our chain's rules out of order,
    /// a jump missing or present more than once.
    pub fn difference_in(&self, table: &str, saved: &str) -> Option<String> {
        let saved = parse(saved);
        for c in self.chains.iter().filter(|c| c.table == table) {
            let Some(have) = saved.chains.get(&c.name) else {
                return Some(match c.rules.first() {
                    Some(r) => format!("missing: -t {table} -A {} {r}", c.name),
                    None => format!("missing: -t {table} -N {}", c.name),
                });
            };
            if let Some(r) = c.rules.iter().find(|r| !have.contains(r)) {
                return Some(format!("missing: -t {table} -A {} {r}", c.name));
            }
            if let Some(r) = have.iter().find(|r| !c.rules.contains(r)) {
                return Some(format!("unexpected: -t {table} -A {} {r}", c.name));
            }
            if *have != c.rules {
                return Some(format!(
                    "chain {} of table {table} holds its rules out of order or repeated",
                    c.name
                ));
            }
        }
        self.jumps
            .iter()
            .filter(|j| j.table == table)
            .find_map(|j| match saved.copies(j) {
                1 => None,
                0 => Some(format!("missing: -t {table} -A {} {}", j.from, j.rule)),
                n => Some(format!("{n} copies of -t {table} -A {} {}", j.from, j.rule)),
            })
    }

    /// The first difference between the ruleset and the kernel (one `iptables-save` per table;
    /// see [`difference_in`](Self::difference_in)).
    pub fn difference(&self, ipt: &Iptables) -> Result<Option<String>, IptablesError> {
        for table in self.tables() {
            if let Some(m) = self.difference_in(table, &ipt.save(table)?) {
                return Ok(Some(m));
            }
        }
        Ok(None)
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

    /// Deletes every copy of our jumps, then our chains, in one transaction per table; returns
    /// whether anything was there.
    pub fn remove(&self, ipt: &Iptables) -> Result<bool, IptablesError> {
        let mut removed = false;
        for table in self.tables() {
            let saved = parse(&ipt.save(table)?);
            let ours: Vec<&Chain> = self
                .chains
                .iter()
                .filter(|c| c.table == table && saved.chains.contains_key(&c.name))
                .collect();
            let mut input = format!("*{table}\n");
            let mut any = false;
            for j in self.jumps.iter().filter(|j| j.table == table) {
                for _ in 0..saved.copies(j) {
                    input.push_str(&format!("-D {} {}\n", j.from, j.rule));
                    any = true;
                }
            }
            // Chains of ours may jump to each other: flush them all before deleting any.
            for c in &ours {
                input.push_str(&format!(":{} - [0:0]\n", c.name));
            }
            for c in &ours {
                input.push_str(&format!("-X {}\n", c.name));
            }
            if !any && ours.is_empty() {
                continue;
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
                    name: "OURS-A".into(),
                    rules: vec!["-j OURS-B".into()],
                },
                Chain {
                    table: "nat",
                    name: "OURS-B".into(),
                    rules: vec!["-j MASQUERADE --random-fully".into()],
                },
            ],
            jumps: vec![Jump::to("nat", "POSTROUTING", "OURS-A")],
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

    /// A chain of ours holding a rule an older configuration asked for, or its rules in
    /// another order, differs even when every rule of ours is there.
    #[test]
    fn extra_and_reordered_rules_are_differences() {
        let good = "*nat\n:POSTROUTING ACCEPT [0:0]\n:OURS-A - [0:0]\n:OURS-B - [0:0]\n-A POSTROUTING -j OURS-A\n-A OURS-A -j OURS-B\n-A OURS-B -j MASQUERADE --random-fully\nCOMMIT\n";
        assert_eq!(ruleset().difference_in("nat", good), None);
        let extra = good.replace(
            "-A OURS-A -j OURS-B\n",
            "-A OURS-A -d 10.9.0.0/16 -j RETURN\n-A OURS-A -j OURS-B\n",
        );
        assert_eq!(
            ruleset().difference_in("nat", &extra).unwrap(),
            "unexpected: -t nat -A OURS-A -d 10.9.0.0/16 -j RETURN"
        );
        assert!(ruleset().repair("nat", &extra).is_some());
        let mut two = ruleset();
        two.chains[0].rules = vec!["-d 10.1.0.0/16 -j RETURN".into(), "-j OURS-B".into()];
        let swapped = good.replace(
            "-A OURS-A -j OURS-B\n",
            "-A OURS-A -j OURS-B\n-A OURS-A -d 10.1.0.0/16 -j RETURN\n",
        );
        assert_eq!(
            two.difference_in("nat", &swapped).unwrap(),
            "chain OURS-A of table nat holds its rules out of order or repeated"
        );
        assert_eq!(
            ruleset()
                .difference_in("nat", "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n")
                .unwrap(),
            "missing: -t nat -A OURS-A -j OURS-B"
        );
    }

    #[test]
    fn duplicate_jumps_are_deleted_and_conditional_jumps_appended() {
        let mut r = ruleset();
        r.jumps.push(Jump {
            table: "nat",
            from: "POSTROUTING",
            rule: rule_line(&[
                "-m",
                "set",
                "--match-set",
                "S",
                "src",
                "-m",
                "comment",
                "--comment",
                "ours: n",
                "-j",
                "OURS-B",
            ])
            .unwrap(),
            place: Place::Last,
        });
        let base = "*nat\n:POSTROUTING ACCEPT [0:0]\n:OURS-A - [0:0]\n:OURS-B - [0:0]\n-A POSTROUTING -j OURS-A\n-A POSTROUTING -j OURS-A\n-A OURS-A -j OURS-B\n-A OURS-B -j MASQUERADE --random-fully\nCOMMIT\n";
        assert_eq!(
            r.repair("nat", base).unwrap(),
            "*nat\n-D POSTROUTING -j OURS-A\n-A POSTROUTING -m set --match-set S src -m comment --comment \"ours: n\" -j OURS-B\nCOMMIT\n"
        );
        let once = base.replacen("-A POSTROUTING -j OURS-A\n", "", 1);
        assert_eq!(
            r.difference_in("nat", &once).unwrap(),
            "missing: -t nat -A POSTROUTING -m set --match-set S src -m comment --comment \"ours: n\" -j OURS-B"
        );
        assert_eq!(
            ruleset().difference_in("nat", base).unwrap(),
            "2 copies of -t nat -A POSTROUTING -j OURS-A"
        );
        assert_eq!(
            ruleset().difference_in("nat", "*nat\nCOMMIT\n").unwrap(),
            "missing: -t nat -A OURS-A -j OURS-B"
        );
    }

    #[test]
    fn arguments_are_written_as_iptables_save_prints_them() {
        assert_eq!(
            rule_line(&["-m", "comment", "--comment", "a b", "-j", "X"]).unwrap(),
            "-m comment --comment \"a b\" -j X"
        );
        for bad in ["a \"b\"", "a\\b", "a\nb", ""] {
            assert_eq!(
                rule_line(&["--comment", bad]),
                Err(Unquotable(bad.to_string()))
            );
        }
    }
}
