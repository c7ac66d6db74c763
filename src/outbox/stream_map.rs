//! A map keyed by stream id, kept in a vector: a worker has at most a few hundred streams
//! waiting at once, scanned faster than hashed, and each `HashMap` type instantiated costs the
//! .wasm several KB (the 400 KB budget). The methods are `HashMap`'s, for the few used.

use super::StreamId;

#[derive(Debug)]
pub struct StreamMap<V>(Vec<(StreamId, V)>);

impl<V> Default for StreamMap<V> {
    fn default() -> Self {
        StreamMap(Vec::new())
    }
}

impl<V> StreamMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, stream: StreamId) -> Option<usize> {
        self.0.iter().position(|(s, _)| *s == stream)
    }

    /// Sets `stream`'s value; returns the one it replaced.
    pub fn insert(&mut self, stream: StreamId, value: V) -> Option<V> {
        match self.position(stream) {
            Some(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            None => {
                self.0.push((stream, value));
                None
            }
        }
    }

    pub fn remove(&mut self, stream: &StreamId) -> Option<V> {
        let i = self.position(*stream)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn get(&self, stream: &StreamId) -> Option<&V> {
        self.position(*stream).map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, stream: &StreamId) -> Option<&mut V> {
        self.position(*stream).map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, stream: &StreamId) -> bool {
        self.position(*stream).is_some()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&StreamId, &V)> {
        self.0.iter().map(|(s, v)| (s, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map() {
        let mut m = StreamMap::new();
        assert_eq!(m.insert(1, "a"), None);
        assert_eq!(m.insert(2, "b"), None);
        assert_eq!(m.insert(1, "c"), Some("a"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&1), Some(&"c"));
        *m.get_mut(&2).unwrap() = "d";
        assert_eq!(m.remove(&2), Some("d"));
        assert_eq!(m.remove(&2), None);
        assert!(m.contains_key(&1) && !m.contains_key(&2));
        assert_eq!(m.values().count(), 1);
        assert_eq!(m.iter().next(), Some((&1, &"c")));
        assert!(!m.is_empty());
    }
}
