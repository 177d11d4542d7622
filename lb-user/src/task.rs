//! A spawned task that ends with its owner.

/// Aborts the task when dropped, however its owner returns (the event stream task when the
/// controller does, the controller when the feed does, the pool's pruner with the front end).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
