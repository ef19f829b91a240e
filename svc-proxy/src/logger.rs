//! The log line format both daemons' operators read: `2026-11-27T22:40:01.123Z info: message`
//! (UTC, RFC 3339), on stderr, through `env_logger`.

use log::{Level, LevelFilter};
use std::io::Write;

/// Installs the logger; records above `level` are dropped.
pub fn init(level: LevelFilter) {
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .target(env_logger::Target::Stderr)
        .format(|buf, record| {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warn",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            writeln!(buf, "{} {level}: {}", buf.timestamp_millis(), record.args())
        })
        .try_init();
}
