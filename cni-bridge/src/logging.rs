//! Logging: warnings to stderr, and everything from `info` up to `logFile` when configured.
//! Never stdout, which carries the CNI result.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

struct Logger {
    file: Mutex<Option<File>>,
}

static LOGGER: Logger = Logger {
    file: Mutex::new(None),
};

impl log::Log for Logger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if record.level() <= log::Level::Warn {
            eprintln!("cni-bridge: {}: {}", record.level(), record.args());
        }
        if let Ok(mut guard) = self.file.lock() {
            if let Some(f) = guard.as_mut() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let _ = writeln!(
                    f,
                    "{}.{:03} [{}] {} {}",
                    now.as_secs(),
                    now.subsec_millis(),
                    std::process::id(),
                    record.level(),
                    record.args()
                );
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (stderr only until [`to_file`]).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Also appends to `path` (created mode 0600 whatever the umask: logs name containers); a file
/// that cannot be opened (or a FIFO nobody reads) is reported on stderr and skipped.
pub fn to_file(path: &Path) {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        // A FIFO without a reader fails at once instead of blocking the verb.
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => {
            if let Ok(mut guard) = LOGGER.file.lock() {
                *guard = Some(f);
            }
        }
        Err(e) => eprintln!("cni-bridge: cannot open log file {}: {e}", path.display()),
    }
}
