//! Delegation to an IPAM plugin binary on `CNI_PATH`, per the spec: same environment, the
//! network config on stdin, the plugin's result (or error object) on its stdout.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::config::{GcAttachment, NetConf};
use crate::env::Env;
use crate::error::{code, CniError, Result};
use crate::result::CniResult;
use crate::version::Version;

/// An IPAM plugin found on `CNI_PATH`.
pub struct Delegated<'a> {
    pub plugin: &'a str,
    pub conf: &'a NetConf,
    pub env: &'a Env,
}

/// What one invocation is about (the env vars that differ between calls).
struct Call<'a> {
    command: &'a str,
    container_id: &'a str,
    ifname: &'a str,
    netns: &'a str,
}

impl Delegated<'_> {
    fn binary(&self) -> Result<PathBuf> {
        if self.env.path.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_PATH is missing or empty; it is needed to find IPAM plugin {:?}",
                    self.plugin
                ),
            ));
        }
        self.env
            .path
            .iter()
            .map(|dir| dir.join(self.plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniError::new(
                    code::IPAM_PLUGIN,
                    format!(
                        "IPAM plugin {:?} not found in CNI_PATH {:?}",
                        self.plugin, self.env.path
                    ),
                )
            })
    }

    fn run_once(&self, call: &Call<'_>, stdin: &[u8]) -> Result<Option<Value>> {
        let bin = self.binary()?;
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", call.command)
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_NETNS", call.netns)
            .env("CNI_ARGS", &self.env.args_raw)
            .env(
                "CNI_PATH",
                std::env::join_paths(&self.env.path).unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                CniError::new(
                    code::IPAM_PLUGIN,
                    format!("cannot run IPAM plugin {}: {e}", bin.display()),
                )
            })?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading stdin is judged by its exit status below.
            let _ = input.write_all(stdin);
        }
        let out = child.wait_with_output().map_err(|e| {
            CniError::new(
                code::IPAM_PLUGIN,
                format!("IPAM plugin {}: {e}", bin.display()),
            )
        })?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if out.status.success() {
            return Ok(parsed);
        }
        // The spec: pass the delegated plugin's error through.
        Err(match parsed {
            Some(v) if v.get("code").and_then(Value::as_u64).is_some() => CniError {
                code: v["code"].as_u64().unwrap_or(0) as u32,
                msg: format!(
                    "IPAM plugin {}: {}",
                    self.plugin,
                    v.get("msg").and_then(Value::as_str).unwrap_or("")
                ),
                details: v
                    .get("details")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            },
            _ => CniError::new(
                code::IPAM_PLUGIN,
                format!(
                    "IPAM plugin {} failed ({}) without an error object",
                    self.plugin, out.status
                ),
            ),
        })
    }

    /// Runs the plugin; a plugin that only speaks up to 1.0.0 gets a 1.1.0 config relabelled
    /// 1.0.0 (the IPAM parts of the two formats are identical).
    fn run(&self, call: &Call<'_>) -> Result<Option<Value>> {
        let stdin = serde_json::to_vec(&self.conf.raw).expect("config serializes");
        match self.run_once(call, &stdin) {
            Err(e)
                if e.code == code::INCOMPATIBLE_VERSION && self.conf.version == Version::V110 =>
            {
                let mut older = self.conf.raw.clone();
                older["cniVersion"] = Value::String(Version::V100.as_str().into());
                let stdin = serde_json::to_vec(&older).expect("config serializes");
                self.run_once(call, &stdin)
            }
            other => other,
        }
    }

    fn netns(&self) -> String {
        self.env
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// Whether the plugin's VERSION reply lists 1.1.0 (the first version with GC and STATUS);
    /// libcni asks the same before sending those verbs.
    fn speaks_1_1(&self) -> Result<bool> {
        let stdin = serde_json::json!({"cniVersion": self.conf.version.as_str()}).to_string();
        let reply = self.run_once(
            &Call {
                command: "VERSION",
                container_id: "",
                ifname: "",
                netns: "",
            },
            stdin.as_bytes(),
        )?;
        Ok(reply
            .as_ref()
            .and_then(|v| v.get("supportedVersions"))
            .and_then(Value::as_array)
            .is_some_and(|vs| vs.iter().any(|v| v.as_str() == Some("1.1.0"))))
    }
}

impl super::Ipam for Delegated<'_> {
    fn add(&self, owner: super::Owner<'_>, _requested: &[IpAddr]) -> Result<super::IpamResult> {
        let netns = self.netns();
        let v = self
            .run(&Call {
                command: "ADD",
                container_id: owner.container_id,
                ifname: owner.ifname,
                netns: &netns,
            })?
            .ok_or_else(|| {
                CniError::new(
                    code::IPAM_PLUGIN,
                    format!("IPAM plugin {} printed no result", self.plugin),
                )
            })?;
        let r = CniResult::from_value(&v, "IPAM result")?;
        Ok(super::IpamResult {
            ips: r.ips,
            routes: r.routes,
            dns: r.dns,
            rewind: Default::default(),
        })
    }

    fn del(&self, owner: super::Owner<'_>, _known: &[IpAddr]) -> Result<()> {
        let netns = self.netns();
        self.run(&Call {
            command: "DEL",
            container_id: owner.container_id,
            ifname: owner.ifname,
            netns: &netns,
        })
        .map(|_| ())
    }

    fn check(&self, owner: super::Owner<'_>, _ips: &[IpAddr]) -> Result<()> {
        let netns = self.netns();
        self.run(&Call {
            command: "CHECK",
            container_id: owner.container_id,
            ifname: owner.ifname,
            netns: &netns,
        })
        .map(|_| ())
    }

    fn gc(&self, _valid: &[GcAttachment]) -> Result<Vec<super::Released>> {
        // Pre-1.1 plugins have no GC; the caller has DELed every stale record through them.
        if self.speaks_1_1()? {
            self.run(&Call {
                command: "GC",
                container_id: "",
                ifname: "",
                netns: "",
            })?;
        }
        Ok(Vec::new())
    }

    fn status(&self) -> Result<()> {
        if self.speaks_1_1()? {
            self.run(&Call {
                command: "STATUS",
                container_id: "",
                ifname: "",
                netns: "",
            })?;
        }
        Ok(())
    }
}
