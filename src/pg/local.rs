//! Backend-local state.

/// Backend-local state in a plain static rather than `thread_local!`: a backend runs one thread,
/// and thread-local storage in a shared library costs a `__tls_get_addr` call per access (it
/// showed in `perf` profiles of the statement hooks).
pub(crate) struct BackendLocal<T>(std::cell::RefCell<T>);

// SAFETY: PostgreSQL backends are single-threaded; these statics are used only from hooks and
// callbacks that PostgreSQL calls on that thread.
unsafe impl<T> Sync for BackendLocal<T> {}

impl<T> BackendLocal<T> {
    pub(crate) const fn new(value: T) -> Self {
        BackendLocal(std::cell::RefCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&std::cell::RefCell<T>) -> R) -> R {
        f(&self.0)
    }
}
