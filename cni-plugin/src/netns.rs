//! Working inside a pod's network namespace: a short-lived thread joins it with setns(2), so
//! the rest of the process (and its other sockets) stays where it was. Netlink sockets and
//! /proc/sys/net files opened on that thread belong to the pod's namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Run `f` on a thread inside the network namespace at `path`.
pub fn run_in<T: Send>(path: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on this thread only, with an fd that stays open for the call.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns worker panicked")))
    })
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
