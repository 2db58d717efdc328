use std::sync::Arc;

use tower::Layer;

use super::policy::Policy;
use super::service::Precondition;
use super::versions::Versions;
use super::writes::WritesInFlight;

/// Applies the [`Precondition`] guard, backed by a validator store, to a service.
#[derive(Debug, Clone)]
pub struct PreconditionLayer<St> {
    store: St,
    policy: Arc<Policy>,
    writes: WritesInFlight,
    versions: Versions,
}

impl<St> PreconditionLayer<St> {
    /// A layer over `store` with the default policy.
    pub fn new(store: St) -> Self {
        Self {
            store,
            policy: Arc::new(Policy::default()),
            writes: WritesInFlight::default(),
            versions: Versions::default(),
        }
    }

    /// At most `n` forwarded writes run at once (each may outlive its client, see
    /// [`super::exchange`]); past it a write gets 503 before it is forwarded. Default
    /// [`super::DEFAULT_MAX_WRITES_IN_FLIGHT`].
    pub fn max_writes_in_flight(mut self, n: usize) -> Self {
        self.writes = WritesInFlight::new(n);
        self
    }

    /// Counts forwarded writes in `writes` (shared with whoever awaits them at shutdown).
    pub fn writes_in_flight(mut self, writes: WritesInFlight) -> Self {
        self.writes = writes;
        self
    }

    /// Remembers representations in `versions` (shared, bounded; see [`Versions`]) for the
    /// conflict responses and merges. Default: a memory of its own, 64 MiB.
    pub fn versions(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }

    /// The policy for requests that carry no [`super::RouteContext`].
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }
}

impl<S, St: Clone> Layer<S> for PreconditionLayer<St> {
    type Service = Precondition<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        let writes = self.writes.clone();
        Precondition::sharing(inner, self.store.clone(), self.policy.clone(), writes)
            .remembering(self.versions.clone())
    }
}
