use std::time::Duration;

use http::{Method, StatusCode};

use super::routes::parse_path_prefix;
use super::*;
use crate::guard::{Aliases, EtagSource, OnStoreUnavailable, OnUnknown, Policy};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, &Overrides::default())
}

fn paths(err: &ConfigError) -> Vec<&str> {
    err.issues().iter().map(|i| i.path.as_str()).collect()
}

const MINIMAL: &str = r#"
    [[routes]]
    name = "api"
    upstream = "http://127.0.0.1:3000"
"#;

#[test]
fn minimal_file_gets_every_default() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(config.store, StoreConfig::default());
    assert_eq!(config.defaults, PolicyConfig::default());
    let routes = config.routes().unwrap();
    assert_eq!(routes.len(), 1);
    let route = &routes[0];
    assert_eq!(&*route.id, "api");
    assert_eq!(route.host, None);
    assert_eq!(route.path_prefix, "/");
    assert_eq!(route.upstream.as_str(), "127.0.0.1:3000");
    assert!(route.preserve_host);
    assert_eq!(*route.policy, Policy::default());
}

#[test]
fn example_file_is_valid_and_shows_the_defaults() {
    let config =
        parse(include_str!("../../config/ifmatch.toml")).expect("config/ifmatch.toml is valid");
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(config.store, StoreConfig::default());
    assert_eq!(config.defaults, PolicyConfig::default());
    let routes = config.routes().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].host.as_deref(), Some("accounts.example.com"));
    assert_eq!(
        routes[0].policy.conflict_status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        routes[0].policy.key_headers,
        vec![http::header::AUTHORIZATION]
    );
    let mut idempotent = Policy::default();
    idempotent.idempotency.mode = crate::guard::IdempotencyMode::Optional;
    assert_eq!(*routes[1].policy, idempotent);
}

#[test]
fn full_file_parses() {
    let config = parse(
        r#"
        [server]
        listen = "0.0.0.0:80"
        admin_listen = "127.0.0.1:9000"
        connect_timeout = "500ms"
        response_timeout = "1m"
        header_read_timeout = "3s"
        max_header_bytes = 16384

        [store]
        kind = "memory"
        max_entries = 10
        ttl = "1h"

        [defaults]
        conflict_status = 412
        require_if_match = true
        require_methods = ["put", "POST"]
        on_unknown = "reject"
        etag_source = "upstream"
        max_hash_bytes = 1024
        key_headers = ["Authorization"]
        query = "identity"
        merge_slashes = false
        case_insensitive_paths = true
        lease_wait = "250ms"

        [[routes]]
        name = "users"
        host = "API.Example.com"
        path_prefix = "/users/"
        upstream = "http://users.internal:8081/"
        preserve_host = false
        conflict_status = 409
        require_if_match = false
        ignore_trailing_slash = false
        lease_wait = "1s"
    "#,
    )
    .unwrap();
    assert_eq!(config.server.connect_timeout, Duration::from_millis(500));
    assert_eq!(config.store.ttl, Duration::from_secs(3600));
    let route = &config.routes().unwrap()[0];
    assert_eq!(route.host.as_deref(), Some("api.example.com"));
    assert_eq!(route.path_prefix, "/users");
    assert_eq!(route.upstream.as_str(), "users.internal:8081");
    assert!(!route.preserve_host);
    let policy = &route.policy;
    assert_eq!(policy.conflict_status, StatusCode::CONFLICT);
    assert!(policy.require_precondition.is_empty());
    assert_eq!(policy.on_unknown, OnUnknown::Reject);
    assert_eq!(policy.etag_source, EtagSource::Upstream);
    assert_eq!(policy.max_hash_bytes, 1024);
    assert_eq!(policy.key_headers, vec![http::header::AUTHORIZATION]);
    assert_eq!(policy.query, crate::guard::QueryMode::Identity);
    let aliases = Aliases {
        merge_slashes: false,
        ignore_trailing_slash: false,
        case_insensitive: true,
    };
    assert_eq!(policy.aliases, aliases);
    assert_eq!(policy.lease_wait, Duration::from_secs(1));
}

#[test]
fn require_if_match_uses_require_methods() {
    let config = parse(
        r#"
        [defaults]
        require_if_match = true
        [[routes]]
        name = "a"
        upstream = "http://a:1"
        [[routes]]
        name = "b"
        upstream = "http://b:1"
        require_methods = ["PUT", "POST"]
    "#,
    )
    .unwrap();
    let routes = config.routes().unwrap();
    assert_eq!(
        routes[0].policy.require_precondition,
        Policy::default_required_methods()
    );
    assert_eq!(
        routes[1].policy.require_precondition,
        vec![Method::PUT, Method::POST]
    );
}

#[test]
fn redis_store_settings_and_their_checks() {
    let config = parse(
        r#"
        [store]
        kind = "redis"
        url = "redis://10.0.0.5:6379/2"
        key_prefix = "shop:"
        failure_policy = "fail_open"

        [[routes]]
        name = "api"
        upstream = "http://127.0.0.1:3000"
    "#,
    )
    .unwrap();
    assert_eq!(config.store.kind, StoreKind::Redis);
    assert_eq!(config.store.lease_ttl, Duration::from_secs(120));
    let route = &config.routes().unwrap()[0];
    assert_eq!(
        route.policy.on_store_unavailable,
        OnStoreUnavailable::Forward
    );
    #[cfg(feature = "redis")]
    assert_eq!(config.store.redis().key_prefix, "shop:");

    // The lease must outlive a revalidation plus the write it guards.
    let err = parse(
        r#"
        [server]
        response_timeout = "10s"
        [store]
        kind = "redis"
        url = "http://not-redis"
        lease_ttl = "20s"
        [[routes]]
        name = "api"
        upstream = "http://127.0.0.1:3000"
    "#,
    )
    .unwrap_err();
    assert_eq!(paths(&err), ["store.url", "store.lease_ttl"], "{err}");

    // --store selects Redis over a file that says memory; fail closed by default.
    let overrides = Overrides {
        upstream: Some("http://127.0.0.1:3000".to_owned()),
        store: Some("redis://127.0.0.1:6379".to_owned()),
        ..Overrides::default()
    };
    let config = Config::from_overrides(&overrides).unwrap();
    assert_eq!(config.store.kind, StoreKind::Redis);
    assert_eq!(config.store.url.as_deref(), Some("redis://127.0.0.1:6379"));
    let route = &config.routes().unwrap()[0];
    assert_eq!(
        route.policy.on_store_unavailable,
        OnStoreUnavailable::Refuse
    );
}

#[test]
fn every_error_is_reported() {
    let err = parse(
        r#"
        surprise = 1

        [server]
        listen = "not an address"
        lsiten = "127.0.0.1:1"
        response_timeout = "0s"
        max_header_bytes = 100

        [store]
        kind = "etcd"
        ttl = "forever"

        [defaults]
        conflict_status = 400
        on_unknown = "guess"
        require_methods = ["GET"]
        key_headers = ["bad header"]

        [[routes]]
        upstream = "https://secure:443"

        [[routes]]
        name = "dup"
        upstream = "http://a:1/base"
        path_prefix = "api"
        host = "a.example:8080"

        [[routes]]
        name = "dup"
        upstream = 3
        conflict_status = 500
    "#,
    )
    .unwrap_err();
    let mut got = paths(&err);
    got.sort_unstable();
    let mut want = vec![
        "surprise",
        "server.listen",
        "server.lsiten",
        "server.response_timeout",
        "server.max_header_bytes",
        "store.kind",
        "store.ttl",
        "defaults.conflict_status",
        "defaults.on_unknown",
        "defaults.require_methods",
        "defaults.key_headers",
        "routes[0].name",
        "routes[0].upstream",
        "routes[1].upstream",
        "routes[1].path_prefix",
        "routes[1].host",
        "routes[2].name",
        "routes[2].upstream",
        "routes[2].conflict_status",
    ];
    want.sort_unstable();
    assert_eq!(got, want, "{err}");
    let text = err.to_string();
    assert!(text.contains("19 errors"), "{text}");
    assert!(text.contains("https upstreams are not supported"), "{text}");
    assert!(text.contains("unknown variant `etcd`"), "{text}");
    assert!(text.contains("duplicate route name"), "{text}");
}

#[test]
fn limits_must_be_positive_and_sane() {
    let err = parse(
        r#"
        [server]
        body_read_timeout = "0s"
        idle_timeout = "1000d"
        max_connections = 0
        shutdown_timeout = "0s"
        discard_body_bytes = 1_073_741_825

        [defaults]
        max_hash_bytes = 0
        lease_wait = "2d"

        [[routes]]
        name = "api"
        upstream = "http://127.0.0.1:3000"
        max_hash_bytes = 4_294_967_296
    "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for expected in [
        "server.body_read_timeout: must be greater than zero",
        "server.idle_timeout: must be at most 1 day",
        "server.max_connections: must be between 1 and 1000000",
        "server.shutdown_timeout: must be greater than zero",
        "server.discard_body_bytes: must be at most 1073741824 (1 GiB)",
        "defaults.max_hash_bytes: must be between 1 and 1073741824 (1 GiB)",
        "defaults.lease_wait: must be at most 1 day",
        "routes[0].max_hash_bytes: must be between 1",
    ] {
        assert!(text.contains(expected), "{expected:?} not in {text}");
    }
    assert!(text.contains("8 errors"), "{text}");
    // Absurd durations are reported, never overflowed.
    let err = parse(
        r#"
        [server]
        response_timeout = "500000000000000000s"
        [store]
        kind = "redis"
        url = "redis://127.0.0.1:6379"
        [[routes]]
        name = "api"
        upstream = "http://127.0.0.1:3000"
    "#,
    )
    .unwrap_err();
    assert!(paths(&err).contains(&"server.response_timeout"), "{err}");
}

#[test]
fn a_bad_key_type_is_not_also_reported_as_missing() {
    let err = parse("[[routes]]\nname = \"a\"\nupstream = 3\n").unwrap_err();
    assert_eq!(paths(&err), vec!["routes[0].upstream"]);
    assert!(err.to_string().contains("invalid type"), "{err}");
}

#[test]
fn syntax_error_is_one_error() {
    let err = parse("[server\nlisten = 1").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

#[test]
fn no_routes_is_an_error() {
    let err = parse("").unwrap_err();
    assert_eq!(paths(&err), vec!["routes"]);
}

#[test]
fn routes_must_be_tables() {
    let err = parse("routes = 1").unwrap_err();
    assert_eq!(paths(&err), vec!["routes"]);
}

#[test]
fn a_route_that_is_not_a_table_is_one_error() {
    let err = parse("routes = [1, { name = \"b\", upstream = \"http://b:1\" }]").unwrap_err();
    assert_eq!(paths(&err), vec!["routes[0]"]);
}

#[test]
fn upstream_urls() {
    assert_eq!(parse_upstream("http://h:1").unwrap().as_str(), "h:1");
    assert_eq!(parse_upstream("http://h/").unwrap().as_str(), "h");
    for bad in [
        "h:1",
        "https://h",
        "ftp://h",
        "http://h/path",
        "http://h?q",
        "http://u:p@h",
        "http://",
        "",
    ] {
        assert!(parse_upstream(bad).is_err(), "{bad}");
    }
}

#[test]
fn path_prefixes_are_normalized() {
    assert_eq!(parse_path_prefix("/").unwrap(), "/");
    assert_eq!(parse_path_prefix("//").unwrap(), "/");
    assert_eq!(parse_path_prefix("/api/").unwrap(), "/api");
    assert!(parse_path_prefix("api").is_err());
    assert!(parse_path_prefix("/a?b").is_err());
}

#[test]
fn admin_token_required_off_loopback_and_never_shown() {
    let open = "[[routes]]\nname = \"x\"\nupstream = \"http://x:1\"\n\
                [server]\nadmin_listen = \"0.0.0.0:9901\"\n";
    let error = Config::from_toml(open, &Overrides::default()).unwrap_err();
    assert!(
        error.to_string().contains("admin.token: required"),
        "{error}"
    );
    let with_env = Overrides {
        admin_token: Some("s3cret".into()),
        ..Overrides::default()
    };
    let config = Config::from_toml(open, &with_env).unwrap();
    assert_eq!(config.admin.token.as_deref(), Some("s3cret"));
    assert!(!format!("{config:?}").contains("s3cret"));
    let blank = format!("{open}[admin]\ntoken = \" \"\n");
    let error = Config::from_toml(&blank, &Overrides::default()).unwrap_err();
    assert!(
        error.to_string().contains("admin.token: must be"),
        "{error}"
    );
}

#[test]
fn upstream_override_replaces_routes() {
    let overrides = Overrides {
        upstream: Some("http://10.0.0.1:80".into()),
        ..Overrides::default()
    };
    let config = Config::from_toml(
        "[[routes]]\nname = \"x\"\nhost = \"x\"\nupstream = \"http://x:1\"\n",
        &overrides,
    )
    .unwrap();
    let routes = config.routes().unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(&*routes[0].id, "default");
    assert_eq!(routes[0].host, None);
    assert_eq!(routes[0].path_prefix, "/");
    assert_eq!(routes[0].upstream.as_str(), "10.0.0.1:80");
}

#[test]
fn policy_overrides_apply_to_defaults_and_every_route() {
    let overrides = Overrides {
        conflict_status: Some(412),
        require_if_match: true,
        listen: Some("127.0.0.1:1".parse().unwrap()),
        ..Overrides::default()
    };
    let config = Config::from_toml(
        r#"
        [[routes]]
        name = "a"
        upstream = "http://a:1"
        conflict_status = 409
        require_if_match = false
        [[routes]]
        name = "b"
        upstream = "http://b:1"
    "#,
        &overrides,
    )
    .unwrap();
    assert_eq!(config.server.listen.port(), 1);
    assert_eq!(config.defaults.conflict_status, 412);
    for route in config.routes().unwrap() {
        assert_eq!(
            route.policy.conflict_status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            route.policy.require_precondition,
            Policy::default_required_methods()
        );
    }
}

#[test]
fn overrides_alone_make_a_config() {
    let config = Config::from_overrides(&Overrides {
        upstream: Some("http://127.0.0.1:3000".into()),
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(config.routes().unwrap().len(), 1);
    assert!(Config::from_overrides(&Overrides::default()).is_err());
}

#[test]
fn bad_default_is_reported_once_not_per_route() {
    let err = parse(
        r#"
        [defaults]
        conflict_status = 418
        [[routes]]
        name = "a"
        upstream = "http://a:1"
        [[routes]]
        name = "b"
        upstream = "http://b:1"
    "#,
    )
    .unwrap_err();
    assert_eq!(paths(&err), vec!["defaults.conflict_status"]);
}

#[test]
fn a_redis_cluster_is_named_by_its_seeds_instead_of_a_url() {
    let toml = |store: &str| {
        format!(
            "[store]\nkind = \"redis\"\n{store}\n[[routes]]\nname = \"api\"\nupstream = \"http://127.0.0.1:3000\"\n"
        )
    };
    let config = parse(&toml(
        r#"cluster_urls = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]"#,
    ))
    .unwrap();
    let redis = config.store.redis();
    assert_eq!(redis.cluster_urls.len(), 2);
    assert_eq!(redis.url, "");

    // One or the other: a cluster and a single node at once is a mistake worth naming.
    let both = parse(&toml(
        "url = \"redis://127.0.0.1:6379\"\ncluster_urls = [\"redis://127.0.0.1:7000\"]",
    ))
    .unwrap_err();
    assert_eq!(paths(&both), ["store.cluster_urls"], "{both}");
    let scheme = parse(&toml(r#"cluster_urls = ["http://127.0.0.1:7000"]"#)).unwrap_err();
    assert_eq!(paths(&scheme), ["store.cluster_urls"], "{scheme}");
    let neither = parse(&toml("")).unwrap_err();
    assert_eq!(paths(&neither), ["store.url"], "{neither}");
}

#[test]
fn idempotency_keys_parse_into_the_policy_and_are_checked() {
    let config = parse(
        r#"
        [defaults]
        idempotency = "required"
        idempotency_methods = ["post"]
        idempotency_retention = "1h"

        [[routes]]
        name = "api"
        upstream = "http://127.0.0.1:3000"
        idempotency_max_response_bytes = 4096
        "#,
    )
    .unwrap();
    let routes = config.routes().unwrap();
    let idempotency = &routes[0].policy.idempotency;
    assert_eq!(idempotency.mode, crate::guard::IdempotencyMode::Required);
    assert_eq!(idempotency.methods, vec![Method::POST]);
    assert_eq!(idempotency.retention, Duration::from_secs(3600));
    assert_eq!(idempotency.max_response_bytes, 4096);
    assert_eq!(
        idempotency.hold,
        idempotency_hold(&config.server, &config.store, routes[0].policy.lease_wait)
    );
    let err = parse(
        r#"
        [store]
        idempotency_max_records = 0
        idempotency_max_bytes = 10

        [defaults]
        idempotency = "sometimes"

        [[routes]]
        name = "api"
        upstream = "http://127.0.0.1:3000"
        idempotency_methods = ["GET"]
        idempotency_retention = "0s"
        idempotency_max_request_bytes = 0
        "#,
    )
    .unwrap_err();
    let paths = paths(&err);
    for path in [
        "store.idempotency_max_records",
        "store.idempotency_max_bytes",
        "defaults.idempotency",
        "routes[0].idempotency_methods",
        "routes[0].idempotency_retention",
        "routes[0].idempotency_max_request_bytes",
    ] {
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
}
