//! The CNI protocol (spec 1.1.0, answering for 0.3.x, 0.4.0 and 1.0.0 too): the environment,
//! the network configuration on stdin, results and errors on stdout.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// Error codes of the spec (section "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin specific: setting up the interface or routes failed.
    pub const SETUP_FAILED: u32 = 100;
    /// Plugin specific: CHECK found the container's network not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
}

/// A CNI error, printed as the spec's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> String {
        serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.msg, self.details)
    }
}

impl std::error::Error for CniError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// What the runtime passed in the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: HashMap<String, String>,
    pub path: Vec<String>,
}

/// Read CNI_COMMAND and the variables that command needs (spec "Parameters").
pub fn env(get: impl Fn(&str) -> Option<String>) -> Result<(Command, Env), CniError> {
    let cmd = match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some("STATUS") => Command::Status,
        Some("GC") => Command::Gc,
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_ENV,
                "unknown CNI_COMMAND",
                format!("CNI_COMMAND={other:?}; want ADD, DEL, CHECK, VERSION, STATUS or GC"),
            ));
        }
        None => {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_COMMAND is not set",
                "this is a CNI plugin: run it from a container runtime",
            ));
        }
    };
    let need = |name: &str| -> Result<String, CniError> {
        match get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(CniError::new(
                code::INVALID_ENV,
                format!("{name} is not set"),
                format!("{name} is required for {cmd:?}"),
            )),
        }
    };
    let mut e = Env {
        path: get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    if let Some(args) = get("CNI_ARGS") {
        for kv in args.split(';').filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                e.args.insert(k.to_string(), v.to_string());
            }
        }
    }
    match cmd {
        Command::Add | Command::Check => {
            e.container_id = need("CNI_CONTAINERID")?;
            e.netns = need("CNI_NETNS")?;
            e.ifname = need("CNI_IFNAME")?;
        }
        Command::Del => {
            // DEL must work with whatever is left: the netns may be gone (CNI_NETNS="").
            e.container_id = need("CNI_CONTAINERID")?;
            e.ifname = need("CNI_IFNAME")?;
            e.netns = get("CNI_NETNS").unwrap_or_default();
        }
        Command::Version | Command::Status | Command::Gc => {}
    }
    if !e.ifname.is_empty()
        && (e.ifname.len() > 15
            || e.ifname == "."
            || e.ifname == ".."
            || e.ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace()))
    {
        return Err(CniError::new(
            code::INVALID_ENV,
            "invalid CNI_IFNAME",
            format!(
                "{:?} is not a valid interface name (at most 15 characters, no '/', ':' or spaces)",
                e.ifname
            ),
        ));
    }
    Ok((cmd, e))
}

/// Read all of stdin.
pub fn stdin() -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "cannot read the network configuration",
            e.to_string(),
        )
    })?;
    Ok(buf)
}

/// The parts of a network configuration every plugin reads.
#[derive(Debug, Clone, Deserialize)]
pub struct CommonConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Parse the common part; the version must be one we speak.
pub fn common(bytes: &[u8]) -> Result<CommonConf, CniError> {
    let c: CommonConf = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    check_version(&c.cni_version)?;
    if c.name.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "network name is empty",
            "\"name\" is required",
        ));
    }
    Ok(c)
}

pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("cniVersion {v:?} is not one of {}", SUPPORTED.join(", ")),
        ))
    }
}

/// `{"cniVersion": ..., "supportedVersions": [...]}` for VERSION.
pub fn version_json(requested: Option<&str>) -> String {
    serde_json::json!({
        "cniVersion": requested.filter(|v| SUPPORTED.contains(v)).unwrap_or(LATEST),
        "supportedVersions": SUPPORTED,
    })
    .to_string()
}

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address of a result: `interface` indexes `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// A result (ADD's output, CHECK's and DEL's prevResult).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

impl CniResult {
    /// The result as the given version writes it: before 1.0.0, each IP carries a
    /// "version" field ("4"/"6").
    pub fn to_json(&self, version: &str) -> Value {
        let legacy = version.starts_with("0.");
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = serde_json::Map::new();
                if legacy {
                    o.insert(
                        "version".into(),
                        (if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        })
                        .into(),
                    );
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(g) = ip.gateway {
                    o.insert("gateway".into(), g.to_string().into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                Value::Object(o)
            })
            .collect();
        let mut root = serde_json::json!({
            "cniVersion": version,
            "ips": ips,
            "routes": self.routes,
            "dns": {},
        });
        if !self.interfaces.is_empty() {
            root["interfaces"] = serde_json::to_value(&self.interfaces).unwrap_or_default();
        }
        root
    }

    /// Read a result of any supported version (a prevResult, or a delegate's output).
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let bad = |what: &str| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode a CNI result",
                what.to_string(),
            )
        };
        let interfaces: Vec<Interface> = match v.get("interfaces") {
            Some(i) => serde_json::from_value(i.clone()).map_err(|e| bad(&e.to_string()))?,
            None => Vec::new(),
        };
        let mut ips = Vec::new();
        for ip in v
            .get("ips")
            .and_then(|i| i.as_array())
            .cloned()
            .unwrap_or_default()
        {
            let address: IpNet = ip
                .get("address")
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad("an ip without a valid address"))?;
            let gateway = ip
                .get("gateway")
                .and_then(|g| g.as_str())
                .and_then(|g| g.parse().ok());
            let interface = ip
                .get("interface")
                .and_then(|i| i.as_u64())
                .map(|i| i as usize);
            ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        let routes: Vec<Route> = match v.get("routes") {
            Some(r) if !r.is_null() => {
                serde_json::from_value(r.clone()).map_err(|e| bad(&e.to_string()))?
            }
            _ => Vec::new(),
        };
        Ok(CniResult {
            interfaces,
            ips,
            routes,
        })
    }
}

/// Print the error JSON on stdout and exit non-zero, as the spec asks.
pub fn fail(e: &CniError, version: &str) -> ! {
    println!("{}", e.to_json(version));
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envmap<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_of_add_and_del() {
        let (c, e) = env(envmap(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;IgnoreUnknown=1",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(c, Command::Add);
        assert_eq!(e.args["K8S_POD_NAME"], "web");
        assert_eq!(e.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
        // DEL without a netns is fine; ADD without one is not.
        assert!(
            env(envmap(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "")
            ]))
            .is_ok()
        );
        let e = env(envmap(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "CNI_NETNS is not set"));
        assert_eq!(env(envmap(&[])).unwrap_err().code, 4);
        assert_eq!(env(envmap(&[("CNI_COMMAND", "BOOM")])).unwrap_err().code, 4);
        let e = env(envmap(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0/evil"),
        ]))
        .unwrap_err();
        assert_eq!(e.code, 4);
    }

    #[test]
    fn config_errors_have_their_codes() {
        assert_eq!(common(b"{nope").unwrap_err().code, 6);
        assert_eq!(
            common(br#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#)
                .unwrap_err()
                .code,
            1
        );
        assert_eq!(
            common(br#"{"cniVersion":"1.0.0","name":"","type":"t"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert!(common(br#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#).is_ok());
    }

    #[test]
    fn results_per_version_both_ways() {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: None,
                sandbox: "/var/run/netns/x".into(),
            }],
            ips: vec![IpConfig {
                address: "10.244.7.2/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
        };
        let v1 = r.to_json("1.1.0");
        assert!(v1["ips"][0].get("version").is_none());
        let v04 = r.to_json("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(CniResult::from_json(&v1).unwrap(), r);
        assert_eq!(CniResult::from_json(&v04).unwrap(), r);
    }

    #[test]
    fn error_json() {
        let e = CniError::new(7, "bad", "worse");
        let v: Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":7,"msg":"bad","details":"worse"})
        );
    }
}
