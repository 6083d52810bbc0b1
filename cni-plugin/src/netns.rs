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

/// Why the file at `path` cannot be a pod's network namespace, if it cannot: not a
/// namespace at all (a regular file, a directory), another kind of namespace, or the
/// namespace this plugin itself runs in (the node's: an ADD there would give the node the
/// pod's addresses and default routes).
pub fn unfit_for_a_pod(ns: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // NS_GET_NSTYPE: _IO(0xb7, 0x3); fails with ENOTTY on anything but an nsfs file.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: an ioctl without an argument on an fd we hold open.
    let kind = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Some("not a network namespace".to_string());
    }
    if kind != libc::CLONE_NEWNET {
        return Some("a namespace, but not a network namespace".to_string());
    }
    let (Ok(target), Ok(own)) = (ns.metadata(), std::fs::metadata("/proc/thread-self/ns/net"))
    else {
        return Some("cannot compare it with the plugin's own network namespace".to_string());
    };
    if (target.dev(), target.ino()) == (own.dev(), own.ino()) {
        return Some("the node's own network namespace (the one this plugin runs in)".to_string());
    }
    None
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
