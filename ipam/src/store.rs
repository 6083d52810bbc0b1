//! The allocations of one network on disk: `<data_dir>/<network>.json`, guarded by an
//! exclusive lock on `<data_dir>/<network>.lock`.
//!
//! Every operation takes the lock, reads the file, changes it in memory and writes it back
//! atomically (a temporary file, fsync, rename) before the lock is released. A process killed at any point leaves either the old file or the new one, both
//! whole, and the kernel drops its lock: no address is ever handed to two containers.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::pool;

/// One address given to one interface of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub container_id: String,
    pub ifname: String,
    pub address: IpAddr,
    /// The pod CIDR it came from.
    pub pool: IpNet,
    /// Seconds since the Unix epoch.
    pub allocated_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    allocations: Vec<Allocation>,
    /// Last address handed out per pool, where the next search starts.
    #[serde(default)]
    cursors: BTreeMap<IpNet, IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid IPAM store ({detail}); refusing to allocate from it")]
    Corrupt { path: PathBuf, detail: String },
    #[error("no free address in {pool} ({used} in use)")]
    Exhausted { pool: IpNet, used: usize },
    #[error("{address} is not an assignable address of the pod CIDRs")]
    NotInPool { address: IpAddr },
    #[error("{address} is in use ({holder})")]
    InUse { address: IpAddr, holder: String },
    #[error("no pod CIDR to allocate from")]
    NoPool,
    #[error("network name {0:?} cannot name a store file (letters, digits, '.', '_', '-')")]
    BadName(String),
}

/// The store of one network.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    name: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The lock, held while alive.
struct Locked {
    _file: File,
}

impl Store {
    /// The store of network `name` under `dir` (created if missing).
    pub fn open(dir: impl AsRef<Path>, name: &str) -> Result<Store, Error> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(Error::BadName(name.to_string()));
        }
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Store {
            dir,
            name: name.to_string(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.name))
    }

    fn lock(&self) -> Result<Locked, Error> {
        let p = self.dir.join(format!("{}.lock", self.name));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        f.lock().map_err(io(&p))?;
        Ok(Locked { _file: f })
    }

    fn read(&self) -> Result<State, Error> {
        let p = self.path();
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(io(&p)(e)),
        };
        let st: State = serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        // An address held twice can only come from outside tampering; never build on it.
        let mut seen = HashSet::new();
        for a in &st.allocations {
            if !seen.insert(a.address) {
                return Err(Error::Corrupt {
                    path: p,
                    detail: format!("{} is allocated twice", a.address),
                });
            }
        }
        Ok(st)
    }

    fn write(&self, st: &State) -> Result<(), Error> {
        let p = self.path();
        let tmp = self.dir.join(format!("{}.json.tmp", self.name));
        let bytes = serde_json::to_vec(st).map_err(|e| Error::Corrupt {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        // No fsync of the directory after the rename: a power loss may then bring back the
        // previous file, which is whole and consistent, and after a reboot none of the
        // pods it lists exists any more (GC clears them). Every process sees the rename at
        // once, which is what makes concurrent and killed calls safe.
        std::fs::rename(&tmp, &p).map_err(io(&p))?;
        Ok(())
    }

    /// Run `f` on the state under the lock; write it back if `f` says it changed.
    fn transact<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<(T, bool), Error>,
    ) -> Result<T, Error> {
        let _lock = self.lock()?;
        let mut st = self.read()?;
        let (out, changed) = f(&mut st)?;
        if changed {
            st.version = 1;
            self.write(&st)?;
        }
        Ok(out)
    }

    /// One address per family of `pools` for (`container_id`, `ifname`); the same ones again
    /// if it already has them. All or nothing: when a family is exhausted, nothing is taken.
    pub fn allocate(
        &self,
        pools: &[IpNet],
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Allocation>, Error> {
        self.allocate_with(pools, container_id, ifname, &[])
    }

    /// Like [`Store::allocate`], with particular addresses asked for (the CNI `ips`
    /// capability): a family with a wanted address gets exactly that one, or nothing is
    /// taken at all. The address must be assignable in one of `pools` and free, or already
    /// held by this attachment.
    pub fn allocate_with(
        &self,
        pools: &[IpNet],
        container_id: &str,
        ifname: &str,
        wanted: &[IpAddr],
    ) -> Result<Vec<Allocation>, Error> {
        if pools.is_empty() {
            return Err(Error::NoPool);
        }
        self.transact(|st| {
            let mine: Vec<Allocation> = st
                .allocations
                .iter()
                .filter(|a| a.container_id == container_id && a.ifname == ifname)
                .cloned()
                .collect();
            let mut used: HashSet<IpAddr> = st.allocations.iter().map(|a| a.address).collect();
            let mut out = mine.clone();
            let mut new = Vec::new();
            for fam_v4 in [true, false] {
                let fam_pools: Vec<&IpNet> = pools
                    .iter()
                    .filter(|p| matches!(p, IpNet::V4(_)) == fam_v4)
                    .collect();
                let want = wanted.iter().find(|a| a.is_ipv4() == fam_v4);
                if let Some(held) = mine.iter().find(|a| a.address.is_ipv4() == fam_v4) {
                    match want {
                        Some(w) if *w != held.address => {
                            return Err(Error::InUse {
                                address: *w,
                                holder: format!(
                                    "{container_id}/{ifname} already holds {}",
                                    held.address
                                ),
                            });
                        }
                        _ => continue,
                    }
                }
                if let Some(w) = want {
                    let Some(p) = fam_pools.iter().find(|p| pool::assignable(p, w)) else {
                        return Err(Error::NotInPool { address: *w });
                    };
                    if let Some(h) = st.allocations.iter().find(|a| a.address == *w) {
                        return Err(Error::InUse {
                            address: *w,
                            holder: format!("held by {}/{}", h.container_id, h.ifname),
                        });
                    }
                    used.insert(*w);
                    new.push(Allocation {
                        container_id: container_id.to_string(),
                        ifname: ifname.to_string(),
                        address: *w,
                        pool: **p,
                        allocated_at: now(),
                    });
                    continue;
                }
                if fam_pools.is_empty() {
                    continue;
                }
                let mut got = None;
                for p in &fam_pools {
                    if let Some(a) = pool::next_free(p, &used, st.cursors.get(*p).copied()) {
                        got = Some((**p, a));
                        break;
                    }
                }
                let Some((p, a)) = got else {
                    let p = *fam_pools[0];
                    let n = st.allocations.iter().filter(|x| x.pool == p).count();
                    return Err(Error::Exhausted { pool: p, used: n });
                };
                used.insert(a);
                new.push(Allocation {
                    container_id: container_id.to_string(),
                    ifname: ifname.to_string(),
                    address: a,
                    pool: p,
                    allocated_at: now(),
                });
            }
            let changed = !new.is_empty();
            for a in &new {
                st.cursors.insert(a.pool, a.address);
            }
            st.allocations.extend(new.iter().cloned());
            out.extend(new);
            out.sort_by_key(|a| !a.address.is_ipv4());
            Ok((out, changed))
        })
    }

    /// Release what (`container_id`, `ifname`) holds; returns it (empty if nothing).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Allocation>, Error> {
        self.transact(|st| {
            let (gone, keep): (Vec<Allocation>, Vec<Allocation>) = st
                .allocations
                .drain(..)
                .partition(|a| a.container_id == container_id && a.ifname == ifname);
            st.allocations = keep;
            let changed = !gone.is_empty();
            Ok((gone, changed))
        })
    }

    /// Release everything not held by one of `valid` (container id, ifname) (CNI GC).
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<Allocation>, Error> {
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|(c, i)| (c.as_str(), i.as_str()))
            .collect();
        self.transact(|st| {
            let (keep, gone): (Vec<Allocation>, Vec<Allocation>) = st
                .allocations
                .drain(..)
                .partition(|a| valid.contains(&(a.container_id.as_str(), a.ifname.as_str())));
            st.allocations = keep;
            let changed = !gone.is_empty();
            Ok((gone, changed))
        })
    }

    /// Every allocation (read under the lock, so never half-written).
    pub fn list(&self) -> Result<Vec<Allocation>, Error> {
        self.transact(|st| Ok((st.allocations.clone(), false)))
    }

    /// What (`container_id`, `ifname`) holds.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<Allocation>, Error> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|a| a.container_id == container_id && a.ifname == ifname)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("petrel-ipam-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn pools() -> Vec<IpNet> {
        vec![
            "10.244.7.0/24".parse().unwrap(),
            "fd00:10:244:7::/64".parse().unwrap(),
        ]
    }

    #[test]
    fn allocate_is_idempotent_and_dual_stack() {
        let s = Store::open(tmp("idem"), "k8s-pod-network").unwrap();
        let a = s.allocate(&pools(), "c1", "eth0").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].address.to_string(), "10.244.7.2");
        assert_eq!(a[1].address.to_string(), "fd00:10:244:7::2");
        assert_eq!(
            s.allocate(&pools(), "c1", "eth0").unwrap(),
            a,
            "same request, same answer"
        );
        let b = s.allocate(&pools(), "c1", "net1").unwrap();
        assert_eq!(
            b[0].address.to_string(),
            "10.244.7.3",
            "another interface, another address"
        );
        assert_eq!(s.list().unwrap().len(), 4);
    }

    #[test]
    fn release_and_gc() {
        let s = Store::open(tmp("gc"), "n").unwrap();
        for c in ["a", "b", "c", "d"] {
            s.allocate(&pools(), c, "eth0").unwrap();
        }
        assert_eq!(s.release("b", "eth0").unwrap().len(), 2);
        assert!(s.release("b", "eth0").unwrap().is_empty(), "twice is fine");
        let gone = s
            .gc(&[("a".into(), "eth0".into()), ("zz".into(), "eth0".into())])
            .unwrap();
        assert_eq!(gone.len(), 4, "c and d released");
        let left: Vec<String> = s
            .list()
            .unwrap()
            .iter()
            .map(|a| a.container_id.clone())
            .collect();
        assert_eq!(left, vec!["a", "a"]);
    }

    #[test]
    fn exhaustion_takes_nothing() {
        let s = Store::open(tmp("full"), "n").unwrap();
        let small: Vec<IpNet> = vec!["10.0.0.0/30".parse().unwrap(), "fd00::/64".parse().unwrap()];
        s.allocate(&small, "a", "eth0").unwrap(); // 10.0.0.2, the only one
        match s.allocate(&small, "b", "eth0") {
            Err(Error::Exhausted { pool, used }) => {
                assert_eq!(pool.to_string(), "10.0.0.0/30");
                assert_eq!(used, 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.list().unwrap().len(),
            2,
            "no IPv6 address was taken for b"
        );
    }

    #[test]
    fn wanted_addresses() {
        let s = Store::open(tmp("want"), "n").unwrap();
        let ip = |x: &str| -> IpAddr { x.parse().unwrap() };
        let a = s
            .allocate_with(&pools(), "a", "eth0", &[ip("10.244.7.9")])
            .unwrap();
        assert_eq!(a[0].address, ip("10.244.7.9"));
        assert_eq!(
            a[1].address,
            ip("fd00:10:244:7::2"),
            "the other family as usual"
        );
        // Asking again for the same is idempotent; asking for another is refused.
        assert_eq!(
            s.allocate_with(&pools(), "a", "eth0", &[ip("10.244.7.9")])
                .unwrap(),
            a
        );
        assert!(matches!(
            s.allocate_with(&pools(), "a", "eth0", &[ip("10.244.7.10")]),
            Err(Error::InUse { .. })
        ));
        // Held by another: refused, and nothing is taken for b.
        assert!(matches!(
            s.allocate_with(&pools(), "b", "eth0", &[ip("10.244.7.9")]),
            Err(Error::InUse { .. })
        ));
        for bad in ["10.244.8.3", "10.244.7.1", "10.244.7.255"] {
            assert!(matches!(
                s.allocate_with(&pools(), "b", "eth0", &[ip(bad)]),
                Err(Error::NotInPool { .. })
            ));
        }
        assert_eq!(s.list().unwrap().len(), 2);
        // Once released, the address can be taken by someone else.
        s.release("a", "eth0").unwrap();
        let b = s
            .allocate_with(&pools(), "b", "eth0", &[ip("10.244.7.9")])
            .unwrap();
        assert_eq!(b[0].address, ip("10.244.7.9"));
    }

    #[test]
    fn corrupt_store_is_refused_not_reset() {
        let d = tmp("corrupt");
        let s = Store::open(&d, "n").unwrap();
        std::fs::write(s.path(), "{ not json").unwrap();
        assert!(matches!(
            s.allocate(&pools(), "a", "eth0"),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(Store::open(&d, "../x"), Err(Error::BadName(_))));
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let d = tmp("threads");
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let s = Store::open(&d, "n").unwrap();
                    (0..8)
                        .map(|i| s.allocate(&pools(), &format!("c{t}-{i}"), "eth0").unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for a in h.join().unwrap().into_iter().flatten() {
                assert!(seen.insert(a.address), "{} handed out twice", a.address);
            }
        }
        assert_eq!(seen.len(), 16 * 8 * 2);
    }
}
