//! `ifmatch storm` against the bundled racy demo API, straight and through the proxy: the
//! README's "See it work" in a test.

mod support;

use std::time::Duration;

use ifmatch::storm::{self, StormArgs};
use support::{DemoHandle, Proxy, config};

fn args(target: String, key_prefix: &str, no_if_match: bool) -> StormArgs {
    support::storm::counted(target, key_prefix, no_if_match, (16, 2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_counts_lost_updates_straight_and_none_through_the_proxy() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let demo = DemoHandle::spawn().await;
        let proxy = Proxy::spawn(config(demo.addr)).await;

        let straight = storm::run(
            args(demo.url("/items"), "straight-", true),
            std::future::pending(),
        )
        .await
        .expect("storm straight");
        assert!(
            straight.lost_updates > 0,
            "16 unconditional writers on 2 keys of a racy API lose updates: {straight:?}"
        );

        let through = storm::run(
            args(proxy.url("/items"), "through-", false),
            std::future::pending(),
        )
        .await
        .expect("storm through the proxy");
        assert_eq!(through.lost_updates, 0, "{through:?}");
        assert!(through.commits > 0);
    })
    .await
    .expect("storms finished in time");
}
