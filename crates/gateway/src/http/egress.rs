//! The egress policy: upstream addresses the node never connects to
//! (`--upstream-deny-cidrs`, e.g. the link-local range holding cloud metadata services).
//!
//! Checked on addresses, not names: a hostname is resolved, the denied addresses are taken
//! out of the answer (none left: the call fails before any connection is made), and an IP
//! literal in a route's URL is checked before connecting. IPv4-mapped IPv6 addresses are
//! checked as the IPv4 address they carry.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use ipnet::IpNet;
use tower::Service;

/// The denied ranges (empty: everything is allowed).
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    deny: Arc<[IpNet]>,
}

impl Policy {
    pub(crate) fn new(deny: &[IpNet]) -> Policy {
        Policy {
            deny: deny.iter().map(IpNet::trunc).collect(),
        }
    }

    pub(crate) fn denies(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.deny.iter().any(|net| net.contains(&ip))
    }

    /// The error for a host whose every address is denied.
    pub(crate) fn refusal(host: &str) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("upstream '{host}' is in a range denied by --upstream-deny-cidrs"),
        )
    }
}

/// The system resolver, minus the denied addresses.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    inner: GaiResolver,
    policy: Policy,
}

impl GuardedResolver {
    pub(crate) fn new(policy: Policy) -> GuardedResolver {
        GuardedResolver {
            inner: GaiResolver::new(),
            policy,
        }
    }
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let lookup = self.inner.call(name);
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.filter(|a| !policy.denies(a.ip())).collect();
            if addrs.is_empty() {
                return Err(Policy::refusal(&host));
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_matched_on_canonical_addresses() {
        let policy = Policy::new(&[
            "169.254.0.0/16".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(policy.denies("169.254.169.254".parse().unwrap()));
        assert!(policy.denies("::ffff:169.254.169.254".parse().unwrap()));
        assert!(policy.denies("fd00::1".parse().unwrap()));
        assert!(!policy.denies("127.0.0.1".parse().unwrap()));
        assert!(!Policy::default().denies("169.254.169.254".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_name_resolving_only_to_denied_addresses_fails() {
        let policy = Policy::new(&["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let mut resolver = GuardedResolver::new(policy);
        let err = resolver
            .call("localhost".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let mut open = GuardedResolver::new(Policy::default());
        assert!(open.call("localhost".parse().unwrap()).await.is_ok());
    }
}
