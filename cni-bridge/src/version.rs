//! The CNI spec versions we speak, and the checks on a config's `cniVersion`.

use crate::error::{code, CniError, Result};

/// The versions VERSION lists; results are emitted in the format of the config's version.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A supported spec version, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V030,
    V031,
    V040,
    V100,
    V110,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version> {
        Ok(match s {
            "0.3.0" => Version::V030,
            "0.3.1" => Version::V031,
            "0.4.0" => Version::V040,
            "1.0.0" => Version::V100,
            "1.1.0" => Version::V110,
            other => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "cniVersion {other:?} is not supported (supported: {})",
                        SUPPORTED.join(", ")
                    ),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V030 => "0.3.0",
            Version::V031 => "0.3.1",
            Version::V040 => "0.4.0",
            Version::V100 => "1.0.0",
            Version::V110 => "1.1.0",
        }
    }

    /// Fails with code 1 unless this version is at least `min` (CHECK needs 0.4.0, GC and
    /// STATUS need 1.1.0).
    pub fn require(self, min: Version, verb: &str) -> Result<()> {
        if self < min {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "config version {} does not allow {verb} (needs {} or later)",
                    self.as_str(),
                    min.as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// The VERSION reply.
pub fn version_reply(config_version: &str) -> String {
    serde_json::json!({
        "cniVersion": config_version,
        "supportedVersions": SUPPORTED,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert!(Version::parse("0.3.1").unwrap() < Version::parse("1.1.0").unwrap());
        for bad in ["0.2.0", "", "2.0.0", "1.0"] {
            assert_eq!(
                Version::parse(bad).unwrap_err().code,
                code::INCOMPATIBLE_VERSION
            );
        }
        assert_eq!(
            Version::V031
                .require(Version::V040, "CHECK")
                .unwrap_err()
                .code,
            1
        );
        assert!(Version::V110.require(Version::V110, "GC").is_ok());
    }
}
