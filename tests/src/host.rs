//! Namespaces and processes, as primitives that return errors instead of panicking: the
//! lab (`petrel-lab`) uses them for hosts that outlive the command, and the tests' guards
//! ([`crate::Netns`], [`crate::Daemon`], [`crate::wait_until`]) wrap them for hosts that
//! live as long as a test. Nothing here touches the root namespace's addresses, routes or
//! sysctls.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Whether `tool` is on PATH (or is a path that exists).
pub fn has_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false)
        || Path::new(tool).exists()
}

pub fn need_tool(tool: &str, package: &str) -> Result<()> {
    if !has_tool(tool) {
        bail!("{tool} not found: apt-get install {package} (./lab.sh and ./test.sh install it)");
    }
    Ok(())
}

/// Run a command; its output if it succeeded, else an error with what it said.
pub fn output_ok(c: &mut Command) -> Result<Output> {
    let out = c
        .output()
        .with_context(|| format!("run {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}{}",
            c.get_program(),
            c.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Like [`output_ok`], returning stdout.
pub fn run_ok(c: &mut Command) -> Result<String> {
    output_ok(c).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `ip -n NS ARGS`.
pub fn ip(ns: &str, args: &str) -> Result<String> {
    run_ok(
        Command::new("ip")
            .args(["-n", ns])
            .args(args.split_whitespace()),
    )
}

/// A sysctl inside namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run_ok(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]))
    .map(|_| ())
}

pub fn netns_exists(ns: &str) -> bool {
    Path::new("/var/run/netns").join(ns).exists()
}

/// A new namespace with its loopback up.
pub fn netns_add(ns: &str) -> Result<()> {
    run_ok(Command::new("ip").args(["netns", "add", ns]))?;
    ip(ns, "link set lo up").map(|_| ())
}

pub fn netns_del(ns: &str) -> Result<()> {
    if !netns_exists(ns) {
        return Ok(());
    }
    run_ok(Command::new("ip").args(["netns", "del", ns])).map(|_| ())
}

/// The processes running in namespace `ns`.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL whatever still runs in `ns`, then delete it.
pub fn netns_destroy(ns: &str) {
    for pid in netns_pids(ns) {
        // SAFETY: kill(2) on a pid inside a namespace of our own.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = netns_del(ns);
}

/// The names of the namespaces made with `ip netns add` (all of them, not only ours).
pub fn netns_names() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Run `f` on a thread inside namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = std::fs::File::open(Path::new("/var/run/netns").join(ns))
        .with_context(|| format!("namespace {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns(2) on this thread only, with an fd open for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow!("setns {ns}: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in {ns} panicked"))?
    })
}

/// `argv` inside namespace `ns` (`ip netns exec` execs the program: the child's pid is the
/// program's), output to `log`, extra environment `env`.
pub fn command_in(ns: &str, argv: &[&str], log: &Path, env: &[(&str, &str)]) -> Result<Command> {
    let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
    let err = out.try_clone()?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .args(argv)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    Ok(c)
}

/// Start `argv` in `ns` as a daemon of its own (new session, output to `log`), and record
/// its pid in `pidfile`.
pub fn spawn_daemon(ns: &str, argv: &[&str], log: &Path, pidfile: &Path) -> Result<u32> {
    let mut c = command_in(ns, argv, log, &[])?;
    // SAFETY: setsid(2) is async-signal-safe; it detaches the daemon from our terminal.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = c
        .spawn()
        .with_context(|| format!("start {} in {ns}", argv[0]))?;
    let pid = child.id();
    std::fs::write(pidfile, format!("{pid}\n"))?;
    Ok(pid)
}

/// The pid recorded in `pidfile`, if that process still runs (not a zombie).
pub fn running_pid(pidfile: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    (state != 'Z' && state != 'X').then_some(pid)
}

pub fn alive(pidfile: &Path) -> bool {
    running_pid(pidfile).is_some()
}

/// SIGTERM the process of `pidfile`, SIGKILL after 5 s; remove the pid file.
pub fn stop(pidfile: &Path) {
    if let Some(pid) = running_pid(pidfile) {
        // SAFETY: kill(2) of a process we started (pid checked to be alive).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let gone = wait_for("exit", Duration::from_secs(5), || {
            running_pid(pidfile).is_none().then_some(())
        });
        if gone.is_err() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_file(pidfile);
}

/// Poll `f` every 100 ms until it gives a value or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
