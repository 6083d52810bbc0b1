//! The file as written: serde types that keep the location of every value that validation may
//! have to point at.

use serde::Deserialize;
use serde_saphyr::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub node: S<RawNode>,
    #[serde(default)]
    pub peers: Vec<S<RawPeer>>,
    /// Dynamic peers: the same settings as a peer, with `range` and `max_peers` for
    /// `address`.
    #[serde(default)]
    pub peer_ranges: Vec<S<RawPeer>>,
    /// `mesh: none` or `mesh: { from: kubernetes, ...settings of a peer }`.
    pub mesh: Option<S<RawMesh>>,
    pub bgp: Option<S<RawBgp>>,
    pub fib: Option<S<RawFib>>,
    pub control: Option<S<RawControl>>,
    pub metrics: Option<S<RawMetrics>>,
    pub originate: Option<S<Vec<S<RawOriginate>>>>,
}

/// A static route source entry (`originate:`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOriginate {
    pub prefix: S<String>,
    pub communities: Option<Vec<S<String>>>,
    pub large_communities: Option<Vec<S<String>>>,
    pub med: Option<S<i64>>,
}

/// One import or export rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    #[serde(rename = "match")]
    pub matches: Option<S<RawMatch>>,
    pub action: Option<S<String>>,
    pub set: Option<S<RawSet>>,
}

/// `source: pod_cidrs` or `source: [pod_cidrs, originate]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub source: Option<S<OneOrMany>>,
    pub prefixes: Option<Vec<S<RawPrefixRule>>>,
    pub communities: Option<Vec<S<String>>>,
    pub large_communities: Option<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSet {
    pub communities: Option<Vec<S<String>>>,
    pub large_communities: Option<Vec<S<String>>>,
    pub med: Option<S<i64>>,
    pub prepend: Option<S<i64>>,
    pub local_pref: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub name: Option<S<String>>,
    pub asn: S<i64>,
    pub router_id: S<String>,
    pub pod_cidrs: Option<S<Vec<S<String>>>>,
    pub pod_cidrs_from: Option<S<String>>,
    pub min_pod_cidr_len: Option<S<RawMinLen>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMinLen {
    pub ipv4: Option<S<i64>>,
    pub ipv6: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeer {
    /// Required for peers and ranges; the mesh has none.
    pub name: Option<S<String>>,
    /// The mesh's source of nodes (`mesh:` only).
    pub from: Option<S<String>>,
    /// A configured peer's address (`peers:`).
    pub address: Option<S<String>>,
    /// A peer range's addresses and cap (`peer_ranges:`).
    pub range: Option<S<String>>,
    pub max_peers: Option<S<i64>>,
    /// Required for peers and ranges; the mesh's is the node's.
    pub asn: Option<S<i64>>,
    pub port: Option<S<i64>>,
    pub local_address: Option<S<String>>,
    #[serde(default)]
    pub passive: bool,
    pub hold_time: Option<S<i64>>,
    pub keepalive: Option<S<i64>>,
    pub connect_retry: Option<S<i64>>,
    pub connect_retry_max: Option<S<i64>>,
    pub password_file: Option<S<String>>,
    pub multihop: Option<S<i64>>,
    #[serde(default)]
    pub gtsm: bool,
    pub families: Option<S<Vec<S<String>>>>,
    pub import: Option<S<RawImport>>,
    pub next_hop_ipv4: Option<S<String>>,
    pub next_hop_ipv6: Option<S<String>>,
    pub graceful_restart: Option<bool>,
    pub enforce_first_as: Option<bool>,
    pub export: Option<S<Vec<S<RawRule>>>>,
    pub bfd: Option<S<RawBfdOrBool>>,
    pub route_reflector_client: Option<S<bool>>,
}

/// `mesh: none`, or the mesh's settings: those of a peer, with `from:`.
#[derive(Debug)]
pub(crate) enum RawMesh {
    None(String),
    Table(Box<RawPeer>),
}

impl<'de> Deserialize<'de> for RawMesh {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawMesh;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("none or a table such as { from: kubernetes }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawMesh::None(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawPeer::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawMesh::Table(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `bfd: true` or `bfd: { enabled: true, min_rx: 300, ... }`. Not `#[serde(untagged)]`:
/// that buffers the value and loses the locations inside it.
#[derive(Debug)]
pub(crate) enum RawBfdOrBool {
    Bool(bool),
    Table(Box<RawBfd>),
}

impl<'de> Deserialize<'de> for RawBfdOrBool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawBfdOrBool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or a table of BFD settings")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawBfdOrBool::Bool(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawBfd::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawBfdOrBool::Table(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBfd {
    pub enabled: Option<bool>,
    pub min_rx: Option<S<i64>>,
    pub min_tx: Option<S<i64>>,
    pub multiplier: Option<S<i64>>,
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImport {
    pub prefixes: Option<Vec<S<RawPrefixRule>>>,
    pub max_prefixes: Option<S<i64>>,
    pub rules: Option<Vec<S<RawRule>>>,
    pub filter_martians: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrefixRule {
    pub prefix: S<String>,
    pub ge: Option<S<i64>>,
    pub le: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBgp {
    pub cluster_id: Option<S<String>>,
    pub listen_addresses: Option<Vec<S<String>>>,
    pub listen_port: Option<S<i64>>,
    pub graceful_restart: Option<S<RawGracefulRestart>>,
    pub max_paths: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGracefulRestart {
    pub enabled: Option<bool>,
    pub restart_time: Option<S<i64>>,
    pub stale_time: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFib {
    pub protocol: Option<S<i64>>,
    pub table: Option<S<i64>>,
    pub enable_forwarding: Option<bool>,
    pub own_cidr_route: Option<S<String>>,
    pub metric: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub socket: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub address: Option<S<String>>,
}
