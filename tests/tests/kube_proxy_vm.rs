//! kube-proxy's IPVS mode as the reference (issue 10): the real kube-proxy of the control plane's
//! release runs in the VM beside svc-proxy, both fed by the host's API server.
//!
//! - `svc_proxy_programs_what_kube_proxy_programs`: `tests/vm/kube-proxy-diff.sh` programs each
//!   state of the corpus with both proxies in equal fresh node namespaces and compares what they
//!   programmed; every difference must be listed in `tests/vm/kube-proxy-diff/intended.txt`.
//! - `svc_proxy_takes_a_node_over_from_kube_proxy`: `tests/vm/kube-proxy-takeover.sh`, the live
//!   migration with a long-lived connection through a VIP.
//! - `the_differences_doc_lists_what_intended_txt_lists` and `the_normalizer_reads_recorded_dumps`
//!   need neither root nor the VM.
//!
//! The VM tests need root (QEMU's 9p export of `/`) and the VM's packages (scripts/setup.sh):
//! `cargo test -p node-tests --test kube_proxy_vm`. One VM boot each, one after the other
//! ([`ControlPlane::vm_output`]); run.sh's last line says how long each guest ran.

use node_tests::containerd::repo_root;
use node_tests::k8s::ControlPlane;
use node_tests::root::require_root;
use std::process::Command;

/// Runs a VM script against a fresh control plane; asserts that it ran to its end with every
/// PASS/FAIL check passed, and returns how many checks passed.
fn vm_script(script: &str) -> usize {
    require_root();
    let cp = ControlPlane::start();
    let out = cp.vm_output(&[script], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(
        out.status.success() && failed.is_empty(),
        "{script} in the VM failed ({}): {failed:#?}",
        out.status
    );
    // finish() prints this only at the end of the script: every check ran.
    assert!(
        stdout.contains("all checks passed") && passed > 0,
        "{script} did not run to its end"
    );
    passed
}

#[test]
fn svc_proxy_programs_what_kube_proxy_programs() {
    let passed = vm_script("tests/vm/kube-proxy-diff.sh");
    eprintln!("kube-proxy-diff.sh: {passed} checks passed");
}

#[test]
fn svc_proxy_takes_a_node_over_from_kube_proxy() {
    let passed = vm_script("tests/vm/kube-proxy-takeover.sh");
    eprintln!("kube-proxy-takeover.sh: {passed} checks passed");
}

fn kpdiff(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(repo_root().join("tests/vm/kube-proxy-diff/kpdiff.py"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run python3 tests/vm/kube-proxy-diff/kpdiff.py")
}

/// docs/SVC-PROXY.md's table of differences is written from intended.txt: same IDs, same
/// statuses.
#[test]
fn the_differences_doc_lists_what_intended_txt_lists() {
    let out = kpdiff(&[
        "check-doc",
        "tests/vm/kube-proxy-diff/intended.txt",
        "docs/SVC-PROXY.md",
    ]);
    assert!(
        out.status.success(),
        "docs/SVC-PROXY.md and intended.txt disagree:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The normalizer on dumps recorded from both proxies in the VM (fixtures/): each gives exactly
/// its expected lines.
#[test]
fn the_normalizer_reads_recorded_dumps() {
    let out = kpdiff(&["selftest"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kpdiff.py selftest failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("PASS")).count() >= 2,
        "kpdiff.py selftest ran fewer than two fixtures:\n{stdout}"
    );
}
