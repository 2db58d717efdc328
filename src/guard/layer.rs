use std::sync::Arc;

use tower::Layer;

use super::policy::Policy;
use super::service::Precondition;

/// Applies the [`Precondition`] guard, backed by a validator store, to a service.
#[derive(Debug, Clone)]
pub struct PreconditionLayer<St> {
    store: St,
    policy: Arc<Policy>,
}

impl<St> PreconditionLayer<St> {
    /// A layer over `store` with the default policy.
    pub fn new(store: St) -> Self {
        Self {
            store,
            policy: Arc::new(Policy::default()),
        }
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
        Precondition::new(inner, self.store.clone(), self.policy.clone())
    }
}
