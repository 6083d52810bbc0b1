//! Working inside a pod's network namespace: the (single) thread joins it with setns(2) and
//! comes back. Netlink sockets and /proc/sys/net files opened meanwhile belong to the pod's
//! namespace; sockets opened before stay in the node's.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Run `f` inside the network namespace at `path`, then come back.
///
/// The plugins are single-threaded, so the calling thread itself switches (setns affects
/// only the calling thread) and switches back to where it was; sockets opened in `f`
/// belong to the pod's namespace, those opened before stay where they are.
pub fn run_in<T>(path: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let target = File::open(path)?;
    let home = File::open("/proc/thread-self/ns/net")?;
    // SAFETY: setns on the calling thread, with fds open for the call.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let out = f();
    // SAFETY: as above; going back must not fail silently, or later work would happen in
    // the pod's namespace.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        eprintln!("petrel-cni: cannot return to the node's network namespace: {e}");
        std::process::abort();
    }
    out
}

/// Write a sysctl under /proc/sys/net of the calling thread's namespace.
pub fn sysctl_set(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/net/{key}"), value)
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/sys/net/{key}: {e}")))
}

/// Read a sysctl; `None` when it does not exist (e.g. no IPv6 in the namespace).
pub fn sysctl_get(key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/net/{key}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Set a sysctl only if it differs: some (`forwarding`, for one) take the kernel's rtnl
/// lock when written, and a busy node should not serialize pod creation on writes that
/// change nothing (new devices inherit `forwarding` from the node's default).
pub fn sysctl_ensure(key: &str, want: &str) -> io::Result<()> {
    if sysctl_get(key).as_deref() == Some(want) {
        return Ok(());
    }
    sysctl_set(key, want)
}
