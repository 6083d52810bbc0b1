//! Shared attribute sets: a value that many routes carry is stored once.
//!
//! [`Interner::intern`] returns the one `Arc` for a value; [`Interner::sweep`] forgets the
//! values nobody else holds any more. A million routes with a few hundred distinct
//! attribute sets cost a few hundred copies.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

#[derive(Debug)]
pub struct Interner<T: Hash + Eq> {
    set: HashSet<Arc<T>>,
    /// Size after the last sweep: the next one runs when the set has doubled.
    swept_at: usize,
}

impl<T: Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            set: HashSet::new(),
            swept_at: 0,
        }
    }
}

impl<T: Hash + Eq> Interner<T> {
    /// The shared copy of `v`.
    pub fn intern(&mut self, v: T) -> Arc<T> {
        if let Some(a) = self.set.get(&v) {
            return a.clone();
        }
        let a = Arc::new(v);
        self.set.insert(a.clone());
        if self.set.len() > 2 * self.swept_at.max(512) {
            self.sweep();
        }
        a
    }

    /// The shared copy of the value `a` holds (`a` itself if it is new).
    pub fn intern_arc(&mut self, a: Arc<T>) -> Arc<T> {
        if let Some(x) = self.set.get(&*a) {
            return x.clone();
        }
        self.set.insert(a.clone());
        a
    }

    /// Forget the values only the interner still holds.
    pub fn sweep(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.swept_at = self.set.len();
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy_and_unused_ones_go() {
        let mut i = Interner::default();
        let a = i.intern(vec![1, 2, 3]);
        let b = i.intern(vec![1, 2, 3]);
        assert!(Arc::ptr_eq(&a, &b));
        let c = i.intern(vec![4]);
        assert_eq!(i.len(), 2);
        drop(c);
        i.sweep();
        assert_eq!(i.len(), 1);
        let d = i.intern_arc(Arc::new(vec![1, 2, 3]));
        assert!(Arc::ptr_eq(&a, &d));
    }
}
