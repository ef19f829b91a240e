//! CNI errors: the spec's `{cniVersion, code, msg, details}` object and the codes we return.
//!
//! Every failure the plugin reports goes through [`CniError`]; `main` prints it in one place.

use serde::Serialize;

/// Codes from the CNI spec, plus this plugin's own (100+), documented in `docs/CNI-BRIDGE.md`.
pub mod code {
    /// The config's `cniVersion` is not one we speak, or the verb needs a newer one.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A known config key is set to a value this plugin does not implement.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (attachment or its network namespace) is unknown.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` environment variable is missing or malformed.
    pub const INVALID_ENV: u32 = 4;
    /// Reading or writing the plugin's own files failed.
    pub const IO_FAILURE: u32 = 5;
    /// Stdin is not valid JSON of the expected shape.
    pub const DECODE_FAILURE: u32 = 6;
    /// The config decodes but its values are invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// STATUS: the network cannot take ADDs now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// A kernel (netlink) operation failed.
    pub const KERNEL: u32 = 100;
    /// `CNI_IFNAME` already exists in the container's namespace.
    pub const IFNAME_EXISTS: u32 = 101;
    /// The bridge name is taken by a link that is not a bridge.
    pub const NOT_A_BRIDGE: u32 = 102;
    /// The bridge already carries another address in the gateway's subnet (and `forceAddress`
    /// is off).
    pub const BRIDGE_ADDRESS_CONFLICT: u32 = 103;
    /// The built-in IPAM has no free address, or a requested address is unavailable.
    pub const NO_ADDRESS: u32 = 104;
    /// CHECK found the kernel state differing from `prevResult`/the config.
    pub const CHECK_MISMATCH: u32 = 105;
    /// The delegated IPAM plugin binary is not on `CNI_PATH`, or its output is unreadable.
    pub const IPAM_PLUGIN: u32 = 106;
    /// Masquerade set or rules could not be set up.
    pub const MASQUERADE: u32 = 107;
}

/// A CNI error as the spec prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The JSON object printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut v = serde_json::to_value(self).expect("error serializes");
        v["cniVersion"] = serde_json::Value::String(cni_version.to_string());
        serde_json::to_string_pretty(&v).expect("value serializes")
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[code {}] {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub type Result<T> = std::result::Result<T, CniError>;

impl From<nodenet::link::LinkError> for CniError {
    fn from(e: nodenet::link::LinkError) -> CniError {
        match e {
            nodenet::link::LinkError::WrongKind { .. } => {
                CniError::new(code::NOT_A_BRIDGE, e.to_string())
            }
            nodenet::link::LinkError::NetNs(ns) => ns.into(),
            _ => CniError::new(code::KERNEL, e.to_string()),
        }
    }
}

impl From<nodenet::netns::NetNsError> for CniError {
    fn from(e: nodenet::netns::NetNsError) -> CniError {
        match e {
            nodenet::netns::NetNsError::NotFound { .. } => {
                CniError::new(code::UNKNOWN_CONTAINER, e.to_string())
            }
            // The path exists but is no network namespace: the runtime passed a bad CNI_NETNS.
            nodenet::netns::NetNsError::Enter { .. } => {
                CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {e}"))
            }
            _ => CniError::new(code::KERNEL, e.to_string()),
        }
    }
}

/// An I/O failure on one of our files, naming the file.
pub fn io_error(what: &str, path: &std::path::Path, e: std::io::Error) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields() {
        let mut e = CniError::new(code::INVALID_CONFIG, "bad subnet");
        e.details = "x".into();
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad subnet");
        assert_eq!(v["details"], "x");
        let bare = CniError::new(code::KERNEL, "m");
        let v: serde_json::Value = serde_json::from_str(&bare.to_json("1.0.0")).unwrap();
        assert!(v.get("details").is_none());
    }
}
