//! The CLI without a running agent: `petrel check` on good and bad files, and what
//! `petrel status` says when no agent answers.

use std::process::Command;

fn petrel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_petrel"))
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("petrel-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_a_good_file_with_a_summary() {
    let p = write(
        "good.yaml",
        "node:\n  asn: 65002\n  router_id: 192.0.2.2\n  pod_cidrs: [10.244.2.0/24, \"fd00:10:244:2::/64\"]\npeers:\n  - { name: tor, address: 192.0.2.1, asn: 65001 }\n",
    );
    let out = petrel()
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("ok: AS65002 router-id 192.0.2.2 pod CIDRs [10.244.2.0/24,fd00:10:244:2::/64], 1 peer(s) (1 eBGP, 0 iBGP), fib protocol 200"),
        "{stdout}"
    );
}

#[test]
fn check_prints_every_problem_with_its_location() {
    let p = write(
        "bad.yaml",
        "node:\n  asn: 0\n  router_id: 192.0.2.2\n  pod_cidrs: [10.244.2.1/24]\npeers:\n  - { name: tor, address: 192.0.2.1, asn: 65001 }\n  - { name: tor, address: 192.0.2.3, asn: 65001, import: { prefixes: [{ prefix: 10.0.0.0/8, le: 4 }] } }\n",
    );
    let out = petrel()
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = p.display();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{f}:2:8: node ASN 0 out of range (1..=4294967295)"),
            format!(
                "{f}:4:15: pod CIDR 10.244.2.1/24 has host bits set (did you mean 10.244.2.0/24?)"
            ),
            format!("{f}:7:13: duplicate peer name \"tor\" (first at line 6)"),
            format!("{f}:7:97: le 4 is less than the prefix length 8 of 10.0.0.0/8"),
        ],
        "{stderr}"
    );
}

#[test]
fn check_reports_syntax_errors_and_missing_files() {
    let p = write("syntax.yaml", "node:\n  asn: 65002\n  router_id: [\n");
    let out = petrel()
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&format!("{}:", p.display())), "{stderr}");
    let out = petrel()
        .args(["check", "--config", "/nonexistent/petrel.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/petrel.yaml"));
}

#[test]
fn status_without_an_agent_says_so() {
    let out = petrel()
        .args(["status", "--socket", "/nonexistent/petrel.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the agent at /nonexistent/petrel.sock"),
        "{stderr}"
    );
}

/// An agent that accepts and never answers (hung, or a socket squatted by something else):
/// status and routes give up after `--timeout` with a clear message, exit code 1.
#[test]
fn status_and_routes_give_up_on_a_mute_agent() {
    let sock = write("mute-placeholder", "").with_file_name("mute.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Accept every connection and hold it, reading nothing, writing nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    for what in ["status", "routes"] {
        let start = std::time::Instant::now();
        let out = petrel()
            .args([what, "--timeout", "0.5", "--socket"])
            .arg(&sock)
            .output()
            .unwrap();
        let took = start.elapsed();
        assert_eq!(out.status.code(), Some(1), "{what}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("did not answer within 0.5 s"),
            "{what}: {stderr}"
        );
        assert!(
            took < std::time::Duration::from_secs(5),
            "{what} took {took:?}"
        );
    }
}
