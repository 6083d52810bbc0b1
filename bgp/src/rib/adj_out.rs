//! What one peer has been given: its Adj-RIB-Out (RFC 4271 3.2), computed from the Loc-RIB
//! through the peer's export policy. Pure.
//!
//! [`AdjRibOut::set`] takes what export says the peer should now have for a prefix and
//! returns the change to send, if any: an announcement with the (interned) outgoing route,
//! or a withdrawal. Announcing what the peer already has, or withdrawing what it never got,
//! is no change. Counts by [`Source`] are kept for status.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::policy::{OutRoute, Source};

/// One change for the peer: `Some` announces, `None` withdraws.
pub type OutChange = (IpNet, Option<Arc<OutRoute>>);

#[derive(Debug, Default)]
pub struct AdjRibOut {
    routes: HashMap<IpNet, (Arc<OutRoute>, Source)>,
    by_source: [u64; 4],
}

impl AdjRibOut {
    /// Make the peer's route for `prefix` be `new`; the change to send, if any.
    pub fn set(
        &mut self,
        prefix: IpNet,
        new: Option<(Arc<OutRoute>, Source)>,
    ) -> Option<OutChange> {
        match new {
            Some((route, source)) => {
                if let Some((old, old_source)) = self.routes.get(&prefix) {
                    if (Arc::ptr_eq(old, &route) || **old == *route) && *old_source == source {
                        return None;
                    }
                    self.by_source[old_source.index()] -= 1;
                }
                self.by_source[source.index()] += 1;
                self.routes.insert(prefix, (route.clone(), source));
                Some((prefix, Some(route)))
            }
            None => {
                let (_, old_source) = self.routes.remove(&prefix)?;
                self.by_source[old_source.index()] -= 1;
                Some((prefix, None))
            }
        }
    }

    /// Forget everything (the session ended).
    pub fn clear(&mut self) {
        self.routes.clear();
        self.by_source = [0; 4];
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Prefixes advertised from `source`.
    pub fn advertised(&self, source: Source) -> u64 {
        self.by_source[source.index()]
    }

    pub fn get(&self, prefix: &IpNet) -> Option<&Arc<OutRoute>> {
        self.routes.get(prefix).map(|(r, _)| r)
    }

    /// Everything advertised of one family, for a route refresh (RFC 2918).
    pub fn family(&self, v6: bool) -> Vec<OutChange> {
        self.routes
            .iter()
            .filter(|(p, _)| matches!(p, IpNet::V6(_)) == v6)
            .map(|(p, (r, _))| (*p, Some(r.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OutNextHop;
    use crate::wire::PathAttrs;

    fn route(med: u32) -> Arc<OutRoute> {
        Arc::new(OutRoute {
            attrs: PathAttrs {
                med: Some(med),
                ..Default::default()
            },
            next_hop: OutNextHop::Local,
        })
    }

    #[test]
    fn changes_table() {
        let p: IpNet = "10.244.2.0/24".parse().unwrap();
        let q: IpNet = "198.51.100.0/24".parse().unwrap();
        let mut a = AdjRibOut::default();
        let r1 = route(1);
        // (step, expected change, advertised pod_cidrs / originate after)
        type Step = (
            Option<(Arc<OutRoute>, Source)>,
            IpNet,
            Option<Option<u32>>,
            u64,
            u64,
        );
        let steps: Vec<Step> = vec![
            // new: announced
            (Some((r1.clone(), Source::PodCidrs)), p, Some(Some(1)), 1, 0),
            // the same again (equal content, another Arc): nothing
            (Some((route(1), Source::PodCidrs)), p, None, 1, 0),
            // changed attributes: announced again
            (Some((route(2), Source::PodCidrs)), p, Some(Some(2)), 1, 0),
            // withdrawn
            (None, p, Some(None), 0, 0),
            // withdrawing what was never sent: nothing
            (None, p, None, 0, 0),
            (
                Some((r1.clone(), Source::Originate)),
                q,
                Some(Some(1)),
                0,
                1,
            ),
        ];
        for (i, (new, prefix, want, pods, orig)) in steps.into_iter().enumerate() {
            let got = a
                .set(prefix, new)
                .map(|(_, r)| r.map(|r| r.attrs.med.unwrap()));
            assert_eq!(got, want, "step {i}");
            assert_eq!(a.advertised(Source::PodCidrs), pods, "step {i}");
            assert_eq!(a.advertised(Source::Originate), orig, "step {i}");
        }
        assert_eq!(a.family(false).len(), 1);
        assert!(a.family(true).is_empty());
        a.clear();
        assert!(a.is_empty());
    }
}
