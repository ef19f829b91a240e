//! A line-per-record logger on stderr (`LEVEL message`); journald adds the timestamps.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let _ = writeln!(std::io::stderr().lock(), "{level}: {}", record.args());
    }

    fn flush(&self) {}
}

/// Installs the logger; records above `level` are dropped.
pub fn init(level: LevelFilter) {
    if log::set_boxed_logger(Box::new(Stderr { level })).is_ok() {
        log::set_max_level(level);
    }
}
