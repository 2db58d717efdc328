//! `GET /admin/hotspots?n=10`: the resources with the most conflicts.

use http::{Response, StatusCode};

use super::reply::{AdminBody, json, problem};
use crate::proxy::Hotspots;

/// How many hot spots are listed without `n`.
const DEFAULT_N: usize = 10;

/// The top `n` (default 10, at most the tracker's capacity).
pub fn list(hotspots: Option<&Hotspots>, query: &str) -> Response<AdminBody> {
    let Some(hotspots) = hotspots else {
        return json(StatusCode::OK, &serde_json::json!({ "hotspots": [] }));
    };
    let mut n = DEFAULT_N;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "n" {
            match value.parse::<usize>() {
                Ok(value) if value > 0 => n = value.min(hotspots.capacity()),
                _ => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "bad-query",
                        "n must be a positive integer",
                    );
                }
            }
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "capacity": hotspots.capacity(),
            "hotspots": hotspots.top(n),
        }),
    )
}
