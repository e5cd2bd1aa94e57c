//! Database and user names interned to small ids, once per client session,
//! so the per-statement key is three integers.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

/// Name shown for id 0: names arriving after the table is full share it.
pub(crate) const OVERFLOW_NAME: &str = "<other>";

pub(crate) struct Names {
    inner: RwLock<NamesInner>,
    max: usize,
}

struct NamesInner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Names {
    /// A table that holds at most `max` distinct names besides the overflow
    /// name.
    pub(crate) fn new(max: usize) -> Self {
        Names {
            inner: RwLock::new(NamesInner {
                ids: HashMap::new(),
                names: vec![Arc::from(OVERFLOW_NAME)],
            }),
            max,
        }
    }

    /// The id of `name`, adding it when new; 0 when the table is full.
    pub(crate) fn intern(&self, name: &str) -> u32 {
        if let Some(&id) = self.inner.read().ids.get(name) {
            return id;
        }
        let mut inner = self.inner.write();
        if let Some(&id) = inner.ids.get(name) {
            return id;
        }
        if inner.ids.len() >= self.max {
            return 0;
        }
        let Ok(id) = u32::try_from(inner.names.len()) else {
            return 0;
        };
        let name: Arc<str> = Arc::from(name);
        inner.names.push(Arc::clone(&name));
        inner.ids.insert(name, id);
        id
    }

    /// The name of `id`; the overflow name for unknown ids.
    pub(crate) fn name(&self, id: u32) -> Arc<str> {
        let inner = self.inner.read();
        let idx = usize::try_from(id).unwrap_or(0);
        Arc::clone(inner.names.get(idx).unwrap_or(&inner.names[0]))
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.read().ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_once_and_overflows_to_zero() {
        let names = Names::new(2);
        let a = names.intern("app");
        assert_eq!(names.intern("app"), a);
        let b = names.intern("postgres");
        assert_ne!(a, b);
        assert_eq!(names.intern("third"), 0);
        assert_eq!(&*names.name(a), "app");
        assert_eq!(&*names.name(0), OVERFLOW_NAME);
        assert_eq!(&*names.name(99), OVERFLOW_NAME);
        assert_eq!(names.len(), 2);
    }
}
