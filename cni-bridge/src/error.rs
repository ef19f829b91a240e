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

impl From<nodenet::files::FilesError> for CniError {
    fn from(e: nodenet::files::FilesError) -> CniError {
        CniError::new(code::IO_FAILURE, e.to_string())
    }
}

impl From<nodenet::attachment::RecordError> for CniError {
    fn from(e: nodenet::attachment::RecordError) -> CniError {
        CniError::new(code::IO_FAILURE, e.to_string())
    }
}

/// Every failure of an operation that keeps going past them (a teardown: DEL, GC, a rollback),
/// as netavark keeps its error list: the first decides the code, the message names them all.
#[derive(Debug, Default)]
pub struct Errors(Vec<CniError>);

impl Errors {
    /// Keeps the failure of `r`, its message prefixed with `context` (which object failed).
    pub fn note<T>(&mut self, context: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(mut e) => {
                e.msg = format!("{context}: {}", e.msg);
                log::warn!("{e}");
                self.0.push(e);
                None
            }
        }
    }

    /// Whether nothing failed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing failed; else one error with the first one's code naming every failure.
    pub fn into_result(self) -> Result<()> {
        let mut all = self.0;
        match all.len() {
            0 => Ok(()),
            1 => Err(all.remove(0)),
            n => {
                let msg = all
                    .iter()
                    .map(|e| format!("[code {}] {}", e.code, e.msg))
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(CniError::new(all[0].code, format!("{n} failures: {msg}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_teardown_failure_is_kept() {
        let mut errors = Errors::default();
        assert!(errors.note("a", Ok(1)).is_some());
        assert!(errors.is_empty());
        assert_eq!(Errors::default().into_result(), Ok(()));
        errors.note::<()>("veth", Err(CniError::new(code::KERNEL, "veth busy")));
        errors.note::<()>("ipam", Err(CniError::new(code::IO_FAILURE, "disk gone")));
        let e = errors.into_result().unwrap_err();
        assert_eq!(e.code, code::KERNEL);
        assert_eq!(
            e.msg,
            "2 failures: [code 100] veth: veth busy; [code 5] ipam: disk gone"
        );
    }

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
