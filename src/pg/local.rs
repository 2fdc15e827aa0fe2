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

/// Depth of tenancy's own SQL (the quota trigger's bookkeeping, the registry lookups): the
/// statistics hooks do not count it as the workspace's activity. Put back to 0 by the statistics'
/// transaction callbacks after an abort.
pub(crate) static INTERNAL: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Run tenancy's own SQL without counting it as the workspace's activity.
pub(crate) fn internal<R>(f: impl FnOnce() -> R) -> R {
    INTERNAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = f();
    INTERNAL.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    r
}
