//! Root-only tests must fail loudly, never skip: CI runs them as root.

/// Panics with a clear message unless the process runs as root (uid 0).
///
/// Every fixture that touches the kernel calls this first, so a non-root run fails at the first
/// namespace instead of passing vacuously.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (it creates network namespaces with `ip netns add`); \
             run it as root, e.g. `sudo -E cargo test -p node-tests` — it is not skipped"
        );
    }
}
