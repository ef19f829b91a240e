//! Kernel knobs under `/proc/sys` (`sysctl -w`), in the calling thread's network namespace.
//!
//! Keys are written as `sysctl` prints them (`net.ipv4.ip_forward`); a key that contains `/` is
//! taken as a path below `/proc/sys` as-is, for names with dots in them
//! (`net/ipv6/conf/br.0/accept_ra`).

use std::io::ErrorKind;
use std::path::PathBuf;

/// Errors from reading or writing a knob.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The key is empty or would leave `/proc/sys`.
    #[error("invalid sysctl key {0:?}")]
    InvalidKey(String),
    /// The knob does not exist on this kernel (or the device is gone).
    #[error("sysctl {0} does not exist")]
    NotFound(String),
    /// Any other I/O failure.
    #[error("sysctl {key}: {source}")]
    Io { key: String, source: std::io::Error },
}

/// The `/proc/sys` path for a key.
pub fn path(key: &str) -> Result<PathBuf, SysctlError> {
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_string()
    } else {
        key.replace('.', "/")
    };
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(SysctlError::InvalidKey(key.to_string()));
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

fn io_error(key: &str, source: std::io::Error) -> SysctlError {
    if source.kind() == ErrorKind::NotFound {
        SysctlError::NotFound(key.to_string())
    } else {
        SysctlError::Io {
            key: key.to_string(),
            source,
        }
    }
}

/// Reads a knob, trimmed (`sysctl -n KEY`).
pub fn read(key: &str) -> Result<String, SysctlError> {
    let p = path(key)?;
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| io_error(key, e))
}

/// Writes a knob (`sysctl -w KEY=VALUE`).
pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    let p = path(key)?;
    std::fs::write(p, value).map_err(|e| io_error(key, e))
}

/// Writes a knob only when its value differs; returns whether it changed.
pub fn ensure(key: &str, value: &str) -> Result<bool, SysctlError> {
    if read(key)? == value {
        return Ok(false);
    }
    write(key, value)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_map_to_proc_paths() {
        assert_eq!(
            path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("net/ipv6/conf/br.0/accept_ra").unwrap(),
            PathBuf::from("/proc/sys/net/ipv6/conf/br.0/accept_ra")
        );
    }

    #[test]
    fn escaping_keys_are_rejected() {
        for key in ["", "net/../../etc/passwd", "net..ipv4", "/"] {
            assert!(
                matches!(path(key), Err(SysctlError::InvalidKey(_))),
                "{key}"
            );
        }
    }

    #[test]
    fn reads_an_existing_knob_and_reports_missing_ones() {
        let v = read("kernel.ostype").unwrap();
        assert_eq!(v, "Linux");
        assert!(matches!(
            read("net.ipv4.no_such_knob"),
            Err(SysctlError::NotFound(_))
        ));
    }
}
