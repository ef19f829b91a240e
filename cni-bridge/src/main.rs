//! cni-bridge: a CNI 1.1 bridge plugin with a host-local-compatible built-in IPAM and
//! ipset-driven masquerade.
//!
//! Layout: [`env`] and [`config`] read and validate the invocation; [`commands`] has one module
//! per verb; [`ipam`] the two address managers; [`masq`] the masquerade set and rules;
//! [`record`] the attachment records; [`result`] and [`version`] the spec's formats; [`error`]
//! the CNI error codes. This file only dispatches and prints — the one place that turns an
//! error into the JSON error object and exit status.

mod commands;
mod config;
mod env;
mod error;
mod ipam;
mod logging;
mod masq;
mod names;
mod record;
mod result;
mod version;

use std::io::Read;

use env::{Command, Env};
use error::{code, CniError, Result};

fn main() {
    logging::init();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let reply_version = config::peek_version(&stdin).unwrap_or_else(|| "1.1.0".to_string());
    let outcome = match read {
        Ok(_) => dispatch(&stdin),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("reading stdin: {e}"),
        )),
    };
    match outcome {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(e) => {
            log::warn!("{e}");
            println!("{}", e.to_json(&reply_version));
            std::process::exit(1);
        }
    }
}

/// Runs one verb; returns what to print on stdout.
fn dispatch(stdin: &[u8]) -> Result<Option<String>> {
    let env = Env::from_lookup(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        let v = config::peek_version(stdin).unwrap_or_else(|| "1.1.0".to_string());
        return Ok(Some(version::version_reply(&v)));
    }
    let conf = config::NetConf::parse(stdin)?;
    if let Some(path) = &conf.log_file {
        logging::to_file(path);
    }
    log::info!(
        "{} network={} container={} ifname={}",
        env.command.as_str(),
        conf.name,
        env.container_id,
        env.ifname
    );
    match env.command {
        Command::Add => {
            let v = commands::add::exec(&env, &conf)?;
            Ok(Some(
                serde_json::to_string_pretty(&v).expect("value serializes"),
            ))
        }
        Command::Del => commands::del::exec(&env, &conf).map(|()| None),
        Command::Check => commands::check::exec(&env, &conf).map(|()| None),
        Command::Gc => commands::gc::exec(&env, &conf).map(|()| None),
        Command::Status => commands::status::exec(&env, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}
