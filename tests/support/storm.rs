//! Storm settings shared by the tests that storm the demo API.

use std::time::Duration;

use ifmatch::storm::StormArgs;

/// A storm of 400 read-modify-write cycles (bounded by count, not time: the same work on a
/// fast or a loaded machine) by `writers` on `keys` keys named `prefix…` under `target`,
/// retrying conflicts without giving up, without a progress line.
pub fn counted(
    target: String,
    prefix: &str,
    no_if_match: bool,
    (writers, keys): (usize, usize),
) -> StormArgs {
    let mut args = StormArgs::new(target);
    args.writers = writers;
    args.keys = keys;
    args.duration = Duration::from_secs(30);
    args.requests = Some(400);
    args.key_prefix = Some(prefix.to_owned());
    args.no_if_match = no_if_match;
    args.max_retries = 1000;
    args.no_progress = true;
    args
}
