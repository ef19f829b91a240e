//! Helpers shared by the nodenet integration tests: captured fixtures and private namespaces.
#![allow(dead_code)]

use std::path::PathBuf;

/// One captured datagram: `send` (what the tool sent) or `recv` (what the kernel replied).
#[derive(Debug, Clone)]
pub struct Datagram {
    pub sent: bool,
    pub bytes: Vec<u8>,
}

/// Loads `tests/fixtures/<path>.txt` (lines `send <hex>` / `recv <hex>`).
pub fn fixture(path: &str) -> Vec<Datagram> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{path}.txt"));
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", file.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (dir, hex) = l.split_once(' ').expect("line is `send|recv HEX`");
            Datagram {
                sent: match dir {
                    "send" => true,
                    "recv" => false,
                    other => panic!("bad direction {other:?} in {}", file.display()),
                },
                bytes: unhex(hex.trim()),
            }
        })
        .collect()
}

/// The `n`th datagram sent (`sent`) or received in a fixture.
pub fn nth(fixture: &[Datagram], sent: bool, n: usize) -> Vec<u8> {
    fixture
        .iter()
        .filter(|d| d.sent == sent)
        .nth(n)
        .unwrap_or_else(|| panic!("fixture has no datagram #{n} (sent={sent})"))
        .bytes
        .clone()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() & 1 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Zeroes the sequence number and port id of every message in a datagram, so captured bytes
/// compare with freshly encoded ones.
pub fn normalise(datagram: &[u8]) -> Vec<u8> {
    let mut out = datagram.to_vec();
    let mut off = 0;
    while off + 16 <= out.len() {
        let len = u32::from_ne_bytes(out[off..off + 4].try_into().unwrap()) as usize;
        assert!(len >= 16 && off + len <= out.len(), "bad message length");
        out[off + 8..off + 16].fill(0);
        off += (len + 3) & !3;
    }
    out
}

/// The messages of a datagram, each as owned bytes.
pub fn split(datagram: &[u8]) -> Vec<Vec<u8>> {
    nodenet::nl::messages(datagram)
        .map(|m| m.expect("well-formed capture").bytes.to_vec())
        .collect()
}

/// Hex dump used in assertion messages, so a mismatch shows both sides readably.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fails loudly unless running as root: the kernel tier must never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this kernel test needs root (it creates a private network namespace); run it as root"
    );
}

/// Moves the calling thread (each test runs on its own) into a fresh, empty network namespace,
/// so nothing the test does reaches the host's namespace; it vanishes with the thread.
pub fn private_netns() {
    require_root();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET) for a private test namespace");
}

/// Runs a command in the calling thread's namespace and returns its stdout, failing on a
/// non-zero exit.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
