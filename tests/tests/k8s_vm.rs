//! The VM guest's way to the host's API server (`tests/vm/run.sh` with `VM_APISERVER_PORT`):
//! `tests/vm/k8s-reach.sh` in the guest lists this control plane's namespaces with kubectl from a
//! node network namespace, holds three watches beside concurrent lists, and finds the rest of the
//! host unreachable; its PASS/FAIL lines are the checks. Then the host sees what the guest wrote.
//!
//! Needs root (QEMU's 9p export of `/`) and the VM's packages (scripts/setup.sh):
//! `cargo test -p node-tests --test k8s_vm`.

use node_tests::k8s::ControlPlane;
use node_tests::root::require_root;

#[test]
fn vm_guest_reaches_the_host_apiserver_and_nothing_else() {
    require_root();
    let cp = ControlPlane::start();
    let marker = format!("vm-reach-{}", std::process::id());
    cp.kubectl(&["create", "namespace", &marker]);

    let out = cp.vm_output(&["tests/vm/k8s-reach.sh"], &[("K8S_MARKER", &marker)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(
        out.status.success() && failed.is_empty(),
        "k8s-reach.sh in the VM failed ({}): {failed:?}",
        out.status
    );
    // finish() prints this only at the end of the script: every check ran.
    assert!(
        stdout.contains("all checks passed") && passed > 0,
        "k8s-reach.sh did not run to its end:\n{stdout}"
    );

    let from_guest = cp.kubectl_json(&["get", "configmap", "reach", "-n", &marker]);
    assert_eq!(
        from_guest["data"]["from"], "vm-guest",
        "the ConfigMap the guest applied is in the host's API server"
    );
}

/// Issue 9's VM tier: the seed scenario with its Service, Pods and EndpointSlice in the host's
/// API server and svc-proxy in the guest (real IPVS) fed by it through the guest's forward;
/// `tests/vm/e2e-k8s.sh`'s PASS/FAIL lines are the checks (node, pod and hairpin reach the VIP,
/// round robin, a pod's Ready=false takes it out of rotation).
#[test]
fn svc_proxy_in_the_vm_serves_the_scenario_from_the_api() {
    require_root();
    let cp = ControlPlane::start();
    let out = cp.vm_output(&["tests/vm/e2e-k8s.sh"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "e2e-k8s.sh in the VM failed ({}): {failed:?}",
        out.status
    );
    assert!(
        stdout.contains("all checks passed"),
        "e2e-k8s.sh did not run to its end"
    );
}

/// Issue 12's VM tier: two nodes on one LAN, each with cni-bridge pods on its own pod CIDR and its
/// own svc-proxy fed by the host's API server, and outside machines; `tests/vm/e2e-cluster.sh`'s
/// PASS/FAIL lines are the checks (ClusterIP, NodePort with both traffic policies, health check
/// node port, LoadBalancer with source ranges, external IP, refused other ports,
/// internalTrafficPolicy, UDP endpoint replacement, pod routes, pod-to-pod without NAT).
#[test]
fn svc_proxy_serves_every_service_type_on_two_nodes() {
    require_root();
    let cp = ControlPlane::start();
    let out = cp.vm_output(&["--timeout", "1800", "tests/vm/e2e-cluster.sh"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "e2e-cluster.sh in the VM failed ({}): {failed:?}",
        out.status
    );
    assert!(
        stdout.contains("all checks passed"),
        "e2e-cluster.sh did not run to its end"
    );
}
