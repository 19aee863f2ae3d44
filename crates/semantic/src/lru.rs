//! A small least-recently-used map: `O(log n)` get and insert.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// LRU map from text to a shared vector. Recency is a monotonically increasing
/// tick; `order` maps tick → key so the oldest entry is `order`'s first.
#[derive(Debug)]
pub(crate) struct Lru<V> {
    capacity: usize,
    tick: u64,
    map: HashMap<Arc<str>, (V, u64)>,
    order: BTreeMap<u64, Arc<str>>,
}

impl<V: Clone> Lru<V> {
    /// A map holding at most `capacity` entries (0 stores nothing).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The value for `key`, marking it most recently used.
    pub(crate) fn get(&mut self, key: &str) -> Option<V> {
        let shared_key = Arc::clone(self.map.get_key_value(key)?.0);
        let tick = self.next_tick();
        let entry = self.map.get_mut(key)?;
        self.order.remove(&entry.1);
        entry.1 = tick;
        self.order.insert(tick, shared_key);
        Some(entry.0.clone())
    }

    /// Inserts or refreshes `key`, evicting the least recently used entry when full.
    pub(crate) fn insert(&mut self, key: &str, value: V) {
        if self.capacity == 0 {
            return;
        }
        let tick = self.next_tick();
        if let Some((shared_key, entry)) = self.map.get_key_value(key) {
            let (shared_key, old_tick) = (Arc::clone(shared_key), entry.1);
            self.order.remove(&old_tick);
            self.order.insert(tick, shared_key);
            self.map.insert(Arc::from(key), (value, tick));
            return;
        }
        while self.map.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
        let shared_key: Arc<str> = Arc::from(key);
        self.order.insert(tick, Arc::clone(&shared_key));
        self.map.insert(shared_key, (value, tick));
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get("a"), Some(1)); // b is now oldest
        lru.insert("c", 3);
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.get("a"), Some(1));
        assert_eq!(lru.get("c"), Some(3));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn reinsert_updates_value_and_recency() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        lru.insert("a", 10); // b is now oldest
        lru.insert("c", 3);
        assert_eq!(lru.get("a"), Some(10));
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.order.len(), 2);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut lru = Lru::new(0);
        lru.insert("a", 1);
        assert_eq!(lru.get("a"), None);
        assert_eq!(lru.len(), 0);
    }
}
