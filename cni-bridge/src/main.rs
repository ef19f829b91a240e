//! cni-bridge: a CNI 1.1 bridge plugin with a host-local-compatible built-in IPAM and
//! ipset-driven masquerade.
//!
//! Layout: [`env`] and [`config`] read and validate the invocation; [`commands`] has one module
//! per verb; [`ipam`] the two address managers; [`masq`] the masquerade set and rules;
//! [`names`] derived names and ownership markers; [`result`] and [`version`] the spec's formats;
//! [`strict`] object-only decoding; [`error`] the CNI error codes. The attachment records are
//! `nodenet::attachment`, shared with svc-proxy. This file only dispatches and prints — the one place that turns an
//! error into the JSON error object and exit status.

mod commands;
mod config;
mod env;
mod error;
mod ipam;
mod logging;
mod masq;
mod names;
mod result;
mod strict;
mod version;

use config::Stdin;
use env::{Command, Env};
use error::Result;

fn main() {
    logging::init();
    let stdin = Stdin::read(std::io::stdin().lock());
    let reply_version = stdin
        .as_ref()
        .ok()
        .and_then(Stdin::version)
        .unwrap_or("1.1.0")
        .to_string();
    let outcome = stdin.and_then(dispatch);
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
fn dispatch(stdin: Stdin) -> Result<Option<String>> {
    let env = Env::from_lookup(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        let v = stdin.version().unwrap_or("1.1.0");
        return Ok(Some(version::version_reply(v)));
    }
    let conf = config::NetConf::from_stdin(stdin)?;
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
