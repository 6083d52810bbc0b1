//! The binaries without a network: VERSION, errors as the spec's JSON on stdout with a
//! non-zero exit, and petrel-ipam's listing. (Having integration tests here also makes
//! cargo build these binaries for the workspace's namespace tests.)

use std::io::Write;
use std::process::{Command, Stdio};

fn run(bin: &str, env: &[(&str, &str)], stdin: &str, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(bin);
    c.env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const CNI: &str = env!("CARGO_BIN_EXE_petrel-cni");
const IPAM: &str = env!("CARGO_BIN_EXE_petrel-ipam");

#[test]
fn version_of_both_plugins() {
    for bin in [CNI, IPAM] {
        let (ok, out) = run(
            bin,
            &[("CNI_COMMAND", "VERSION")],
            r#"{"cniVersion":"1.0.0"}"#,
            &[],
        );
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}

#[test]
fn errors_are_json_on_stdout() {
    let (ok, out) = run(CNI, &[], "", &[]);
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 4);
    assert_eq!(v["msg"], "CNI_COMMAND is not set");
    let (ok, out) = run(
        CNI,
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
        ],
        r#"{"cniVersion":"0.4.0","name":"n","type":"petrel-cni","host_veth_prefix":"waytoolong"}"#,
        &[],
    );
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["code"].as_u64(), v["cniVersion"].as_str()),
        (Some(7), Some("0.4.0"))
    );
}

#[test]
fn ipam_list_of_an_empty_store() {
    let dir = std::env::temp_dir().join(format!("petrel-ipam-cli-{}", std::process::id()));
    let (ok, out) = run(
        IPAM,
        &[],
        "",
        &["list", "--json", "--data-dir", dir.to_str().unwrap()],
    );
    assert!(ok);
    assert_eq!(out.trim(), "[]");
    let (ok, out) = run(
        IPAM,
        &[],
        "",
        &["list", "--data-dir", dir.to_str().unwrap()],
    );
    assert!(ok);
    assert!(out.starts_with("NETWORK"), "{out}");
}
