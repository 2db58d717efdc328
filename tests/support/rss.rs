//! The process's resident set, and requests through an in-process guard, for the memory
//! tests.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceExt};

/// `GET path` through `service` (a guard over an infallible in-process origin): the status.
pub async fn get_through<S, B>(service: &mut S, path: String) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let request = Request::get(path)
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    let response = service
        .ready()
        .await
        .expect("infallible")
        .call(request)
        .await
        .expect("infallible");
    response.status()
}

/// `VmRSS` from `/proc/self/status` in bytes, if the platform tells.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
