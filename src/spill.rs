//! [`Spill`]: a growable buffer that costs one pointer while it is empty, for the per-connection lists most
//! connections never use (queued control frames, a control payload cut across reads, a slot's topics): at
//! 10,000 idle connections every 16 bytes saved is 160 KB.

/// A `Vec` that exists only while it holds something: `None` when empty (never `Some` of an empty vector), so
/// `is_empty` is one comparison and an empty one owns no heap.
#[derive(Debug)]
// A boxed `Vec` on purpose: one word while empty, where a `Vec` is three (clippy's box_collection assumes the box
// is an extra indirection for nothing).
#[allow(clippy::box_collection)]
pub(crate) struct Spill<T>(Option<Box<Vec<T>>>);

impl<T> Default for Spill<T> {
    fn default() -> Self {
        Spill(None)
    }
}

impl<T> Spill<T> {
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    #[inline]
    pub(crate) fn as_slice(&self) -> &[T] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }

    /// Heap bytes held: the vector's header and its buffer.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |v| std::mem::size_of::<Vec<T>>() + v.capacity() * std::mem::size_of::<T>())
    }

    /// Changes the contents through the vector (made if there is none); an emptied one is freed.
    pub(crate) fn edit<R>(&mut self, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
        let v = self.0.get_or_insert_with(Default::default);
        let r = f(v);
        if v.is_empty() {
            self.0 = None;
        }
        r
    }

    /// Empties it, freeing its buffer.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    /// Takes the contents out (an empty `Vec`, allocating nothing, when there are none).
    pub(crate) fn take(&mut self) -> Vec<T> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// Puts contents in (an empty vector is dropped).
    pub(crate) fn set(&mut self, v: Vec<T>) {
        self.0 = (!v.is_empty()).then(|| Box::new(v));
    }
}

/// A spare buffer that costs one pointer while there is none: `None` exactly when it has no capacity. Unlike a
/// [`Spill`], an empty buffer with capacity is kept (its capacity, and its old bytes, are the point).
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // (one word while there is none, as for `Spill`)
pub(crate) struct Spare(Option<Box<Vec<u8>>>);

impl Spare {
    /// There is a buffer (with capacity: one without is never kept).
    #[inline]
    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.capacity())
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    /// Heap bytes held: the vector's header and its buffer.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |v| std::mem::size_of::<Vec<u8>>() + v.capacity())
    }

    /// Takes the buffer out (an empty `Vec`, allocating nothing, when there is none).
    #[inline]
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// Puts `v` in and hands back what was there (a buffer without capacity is not kept).
    pub(crate) fn replace(&mut self, v: Vec<u8>) -> Vec<u8> {
        match (&mut self.0, v.capacity()) {
            (_, 0) => self.take(),
            (Some(b), _) => std::mem::replace(&mut **b, v),
            (None, _) => {
                self.0 = Some(Box::new(v));
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Spill;

    #[test]
    fn empty_is_none_and_costs_one_pointer() {
        assert_eq!(std::mem::size_of::<Spill<u8>>(), std::mem::size_of::<usize>());
        let mut s = Spill::<u8>::default();
        assert!(s.is_empty() && s.heap_bytes() == 0 && s.as_slice().is_empty());
        s.edit(|v| v.extend_from_slice(b"abc"));
        assert_eq!((s.len(), s.as_slice()), (3, &b"abc"[..]));
        s.edit(|v| v.drain(..3).count());
        assert!(s.is_empty() && s.heap_bytes() == 0, "an emptied spill frees its buffer");
        s.set(vec![1, 2]);
        assert_eq!(s.take(), vec![1, 2]);
        s.set(Vec::new());
        assert!(s.is_empty());
    }
}
