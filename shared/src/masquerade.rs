//! Masquerade keyed on an ipset: a nat chain of our own holding the rules, and one jump to it
//! from a built-in chain, for cni-bridge (pod traffic leaving a network) and svc-proxy (a pod
//! reaching itself through a virtual service).
//!
//! The rules are static and written as every rule of ours is, by [`crate::ruleset`]: compared
//! with `iptables-save` and repaired in one `iptables-restore --noflush` transaction (the chain's
//! content replaced atomically, a missing jump appended, extra copies of it deleted). When every
//! rule matches the set (`-m set --match-set SET ...`), the kernel counts them as references of
//! that set, so [`MasqueradeRules::proven`] verifies them with one netlink round trip and no
//! exec: a set whose count differs from the number of rules gets its rules rewritten.

use ipnetwork::IpNetwork;

use crate::ipset::{self, Ipset};
use crate::iptables::{Iptables, IptablesError};
use crate::ruleset::{rule_line, Chain, Jump, Place, Ruleset};
use crate::Family;

const TABLE: &str = "nat";

/// Errors from ensuring or checking the rules.
#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    #[error(transparent)]
    Iptables(#[from] IptablesError),
    #[error(transparent)]
    Ipset(#[from] ipset::Error),
    /// The spec cannot be written as a rule (e.g. a quote in the comment).
    #[error("masquerade rules for {set}: {why}")]
    Invalid { set: String, why: String },
}

type Result<T> = std::result::Result<T, MasqueradeError>;

/// The rules of one set, one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeRules {
    pub family: Family,
    /// The ipset whose members' traffic is masqueraded.
    pub set: String,
    /// The directions of the set match (`src`; `dst,dst,src` for a `hash:ip,port,ip` set).
    pub set_flags: &'static str,
    /// Our nat chain.
    pub chain: String,
    /// The built-in nat chain that jumps to ours.
    pub from: &'static str,
    /// Whether the jump itself matches the set (then it counts for [`Self::proven`]).
    pub jump_matches_set: bool,
    /// `-m comment --comment` on every rule, naming the owner.
    pub comment: Option<String>,
    /// Destinations returned from the chain unmasqueraded, in order (`-d NET -j RETURN`).
    pub exempt: Vec<IpNetwork>,
    /// Destinations the masquerade rule leaves out (`! -d NET -j MASQUERADE`).
    pub except: Option<IpNetwork>,
    /// Whether the chain's rules match the set too (they count for [`Self::proven`]).
    pub rules_match_set: bool,
}

impl MasqueradeRules {
    fn set_match(&self) -> Vec<String> {
        ["-m", "set", "--match-set", &self.set, self.set_flags]
            .map(String::from)
            .to_vec()
    }

    fn tail(&self, target: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = &self.comment {
            out.extend(["-m", "comment", "--comment", c].map(String::from));
        }
        out.extend(["-j".to_string(), target.to_string()]);
        out
    }

    /// The chain's rules in order, as `iptables` arguments after `-A CHAIN`.
    pub fn chain_rules(&self) -> Vec<Vec<String>> {
        let matches = if self.rules_match_set {
            self.set_match()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for net in self
            .exempt
            .iter()
            .filter(|n| Family::of_net(n) == self.family)
        {
            let net = IpNetwork::new(net.network(), net.prefix()).unwrap_or(*net);
            let mut r = vec!["-d".to_string(), net.to_string()];
            r.extend(matches.iter().cloned());
            r.extend(self.tail("RETURN"));
            out.push(r);
        }
        let mut r = Vec::new();
        if let Some(except) = self.except {
            r.extend(["!".to_string(), "-d".to_string(), except.to_string()]);
        }
        r.extend(matches);
        r.extend(self.tail("MASQUERADE"));
        out.push(r);
        out
    }

    /// The jump from [`Self::from`], as `iptables` arguments after `-A FROM`.
    pub fn jump_rule(&self) -> Vec<String> {
        let mut r = if self.jump_matches_set {
            self.set_match()
        } else {
            Vec::new()
        };
        r.extend(self.tail(&self.chain));
        r
    }

    /// Every rule as `(chain, arguments)`, the chain's first and the jump last.
    pub fn rules(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .chain_rules()
            .into_iter()
            .map(|r| (self.chain.clone(), r))
            .collect();
        out.push((self.from.to_string(), self.jump_rule()));
        out
    }

    /// The rules as a [`Ruleset`]: our chain, and the jump to it appended to [`Self::from`].
    pub fn ruleset(&self) -> Result<Ruleset> {
        let invalid = |e: crate::ruleset::Unquotable| MasqueradeError::Invalid {
            set: self.set.clone(),
            why: e.to_string(),
        };
        let rules = self
            .chain_rules()
            .iter()
            .map(|r| rule_line(r))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(invalid)?;
        Ok(Ruleset {
            chains: vec![Chain {
                table: TABLE,
                name: self.chain.clone(),
                rules,
            }],
            jumps: vec![Jump {
                table: TABLE,
                from: self.from,
                rule: rule_line(&self.jump_rule()).map_err(invalid)?,
                place: Place::Last,
            }],
        })
    }

    /// How many kernel references the set has when exactly these rules exist.
    pub fn expected_references(&self) -> u32 {
        let chain = if self.rules_match_set {
            self.chain_rules().len() as u32
        } else {
            0
        };
        chain + u32::from(self.jump_matches_set)
    }

    fn iptables(&self) -> Iptables {
        Iptables::new(self.family)
    }

    /// The `iptables-restore --noflush` input that writes the rules into a table holding none
    /// of them.
    pub fn restore_input(&self) -> Result<String> {
        let rules = self.ruleset()?;
        Ok(rules
            .repair(TABLE, "")
            .expect("an empty table lacks every rule"))
    }

    /// Whether the rules are in place, without exec: the set's kernel reference count equals
    /// [`Self::expected_references`] (only meaningful when it is not zero). `false` also when
    /// the set does not exist.
    pub fn proven(&self, ipset: &Ipset) -> Result<bool> {
        Ok(ipset
            .header(&self.set)?
            .is_some_and(|info| info.references == self.expected_references()))
    }

    /// Makes the table hold exactly these rules, the jump once (exec: one `iptables-save`, and
    /// one `iptables-restore` when something differs). Returns whether anything was repaired.
    pub fn ensure(&self) -> Result<bool> {
        Ok(!self.ruleset()?.ensure(&self.iptables())?.is_empty())
    }

    /// The first difference between the kernel and exactly these rules (exec, one
    /// `iptables-save`): a rule missing, a rule in our chain that is not one of these (an older
    /// configuration's), the chain out of order, the jump absent or repeated.
    pub fn difference(&self) -> Result<Option<String>> {
        Ok(self.ruleset()?.difference(&self.iptables())?)
    }

    /// Deletes the jump (every copy) and the chain; returns whether anything was there.
    pub fn remove(&self) -> Result<bool> {
        Ok(self.ruleset()?.remove(&self.iptables())?)
    }

    /// The `iptables`/`ip6tables` program these rules are written with, for messages.
    pub fn command(&self) -> &'static str {
        self.iptables().command()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_rules() -> MasqueradeRules {
        MasqueradeRules {
            family: Family::V4,
            set: "CNIB-0123".into(),
            set_flags: "src",
            chain: "CNIB-0123".into(),
            from: "POSTROUTING",
            jump_matches_set: true,
            comment: Some("cni-bridge: podnet".into()),
            exempt: vec!["10.0.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
            except: Some(Family::V4.multicast()),
            rules_match_set: true,
        }
    }

    #[test]
    fn every_rule_matches_the_set_and_is_counted() {
        let r = pod_rules();
        let text: Vec<String> = r
            .rules()
            .iter()
            .map(|(c, a)| format!("{c} {}", a.join(" ")))
            .collect();
        assert_eq!(
            text,
            vec![
                "CNIB-0123 -d 10.0.0.0/24 -m set --match-set CNIB-0123 src -m comment --comment cni-bridge: podnet -j RETURN",
                "CNIB-0123 ! -d 224.0.0.0/4 -m set --match-set CNIB-0123 src -m comment --comment cni-bridge: podnet -j MASQUERADE",
                "POSTROUTING -m set --match-set CNIB-0123 src -m comment --comment cni-bridge: podnet -j CNIB-0123",
            ]
        );
        assert_eq!(r.expected_references(), 3);
        assert_eq!(
            r.restore_input().unwrap(),
            "*nat\n:CNIB-0123 - [0:0]\n\
             -A CNIB-0123 -d 10.0.0.0/24 -m set --match-set CNIB-0123 src -m comment --comment \"cni-bridge: podnet\" -j RETURN\n\
             -A CNIB-0123 ! -d 224.0.0.0/4 -m set --match-set CNIB-0123 src -m comment --comment \"cni-bridge: podnet\" -j MASQUERADE\n\
             -A POSTROUTING -m set --match-set CNIB-0123 src -m comment --comment \"cni-bridge: podnet\" -j CNIB-0123\n\
             COMMIT\n"
        );
        assert_eq!(r.ruleset().unwrap().set_references("CNIB-0123"), 3);
    }

    #[test]
    fn a_plain_jump_is_not_counted() {
        let r = MasqueradeRules {
            family: Family::V6,
            set: "SVCPROXY-6-LOOP-BACK".into(),
            set_flags: "dst,dst,src",
            chain: "SVCPROXY-POSTROUTING".into(),
            from: "POSTROUTING",
            jump_matches_set: false,
            comment: None,
            exempt: Vec::new(),
            except: None,
            rules_match_set: true,
        };
        assert_eq!(
            r.chain_rules(),
            vec![[
                "-m",
                "set",
                "--match-set",
                "SVCPROXY-6-LOOP-BACK",
                "dst,dst,src",
                "-j",
                "MASQUERADE"
            ]
            .map(String::from)
            .to_vec()]
        );
        assert_eq!(r.jump_rule(), vec!["-j", "SVCPROXY-POSTROUTING"]);
        assert_eq!(r.expected_references(), 1);
        assert_eq!(r.command(), "ip6tables");
    }

    #[test]
    fn unquotable_comments_are_refused() {
        let mut r = pod_rules();
        r.comment = Some("a \"b\"".into());
        assert!(matches!(
            r.restore_input(),
            Err(MasqueradeError::Invalid { .. })
        ));
        assert!(matches!(r.ruleset(), Err(MasqueradeError::Invalid { .. })));
    }
}
