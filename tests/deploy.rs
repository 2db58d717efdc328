//! `docker/` as shipped, checked without a container engine: the Dockerfile, the compose file
//! and the Kubernetes manifest refer to files, settings, subcommands, ports and services that
//! exist, and agree with each other and with the config files they use.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_norway::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The binary's output for `args`, and whether it succeeded.
fn ifmatch(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ifmatch"))
        .args(args)
        .current_dir(root())
        .env_remove("IFMATCH_CONFIG")
        .output()
        .expect("ifmatch ran");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every environment variable the binary reads: the `[env: NAME=` of its help texts, plus
/// `RUST_LOG`.
fn known_env() -> BTreeSet<String> {
    let mut names = BTreeSet::from(["RUST_LOG".to_owned()]);
    for args in [
        &["--help"][..],
        &["healthcheck", "--help"],
        &["demo", "--help"],
    ] {
        let (ok, help) = ifmatch(args);
        assert!(ok, "{help}");
        for rest in help.split("[env: ").skip(1) {
            names.insert(rest.split(['=', ']']).next().unwrap().to_owned());
        }
    }
    assert!(names.contains("IFMATCH_STORE"), "{names:?}");
    names
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .port()
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<SocketAddr>().unwrap().ip().is_loopback()
}

/// `server.listen` and `server.admin_listen` of a config file (defaults when absent).
fn listeners(config: &str) -> (String, String) {
    let config =
        ifmatch::config::Config::load(&root().join(config), &ifmatch::config::Overrides::default())
            .unwrap_or_else(|e| panic!("{config}: {e}"));
    (
        config.server.listen.to_string(),
        config.server.admin_listen.to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile.

struct Image {
    /// `ENV` of the runtime stage.
    env: BTreeMap<String, String>,
    /// `COPY --from=builder /src/<source> <dest>` of the runtime stage: (source, dest).
    copies: Vec<(String, String)>,
    expose: Vec<u16>,
    healthcheck: Vec<String>,
    entrypoint: Vec<String>,
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

fn json_array(text: &str) -> Vec<String> {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn image() -> Image {
    let text = read("docker/Dockerfile");
    let all = instructions(&text);
    let runtime = all
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    let mut image = Image {
        env: BTreeMap::new(),
        copies: Vec::new(),
        expose: Vec::new(),
        healthcheck: Vec::new(),
        entrypoint: Vec::new(),
    };
    for instruction in &all[runtime..] {
        let (verb, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
        match verb {
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (name, value) = pair.split_once('=').expect("ENV NAME=value");
                    image.env.insert(name.to_owned(), value.to_owned());
                }
            }
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                if let ["--from=builder", source, dest] = parts[..] {
                    let source = source.strip_prefix("/src/").expect("builder copies /src");
                    image.copies.push((source.to_owned(), dest.to_owned()));
                }
            }
            "EXPOSE" => {
                image.expose = rest
                    .split_whitespace()
                    .map(|p| p.parse().unwrap())
                    .collect();
            }
            "HEALTHCHECK" => {
                let command = rest.split("CMD").nth(1).expect("HEALTHCHECK CMD");
                image.healthcheck = json_array(command);
            }
            "ENTRYPOINT" => image.entrypoint = json_array(rest),
            _ => {}
        }
    }
    image
}

/// The config file the image runs with: the one `IFMATCH_CONFIG` names, copied in.
fn image_config(image: &Image) -> String {
    let path = image
        .env
        .get("IFMATCH_CONFIG")
        .expect("the image sets IFMATCH_CONFIG");
    let (source, _) = image
        .copies
        .iter()
        .find(|(_, dest)| dest == path)
        .unwrap_or_else(|| panic!("IFMATCH_CONFIG={path} is not copied into the image"));
    source.clone()
}

#[test]
fn the_dockerfile_copies_what_exists_and_runs_with_its_config() {
    let image = image();
    let ignored: Vec<String> = read("docker/Dockerfile.dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    // Files from the source tree (the binary is built, not copied from the context).
    for (source, _) in image
        .copies
        .iter()
        .filter(|(s, _)| !s.starts_with("target/"))
    {
        assert!(
            root().join(source).is_file(),
            "{source} is not in the build context"
        );
        assert!(
            !ignored
                .iter()
                .any(|i| source == i || source.starts_with(&format!("{i}/"))),
            "{source} is excluded by the .dockerignore"
        );
        if source.ends_with(".toml") {
            let (ok, out) = ifmatch(&["check-config", source]);
            assert!(ok, "check-config {source}: {out}");
        }
    }
    let config = image_config(&image);

    // The variables override the file: they must agree with it, and with EXPOSE.
    let known = known_env();
    for name in image.env.keys() {
        assert!(
            known.contains(name),
            "ENV {name} is not a setting ifmatch reads"
        );
    }
    let (listen, admin) = listeners(&config);
    let env_listen = image.env.get("IFMATCH_LISTEN").unwrap_or(&listen);
    let env_admin = image.env.get("IFMATCH_ADMIN_LISTEN").unwrap_or(&admin);
    assert_eq!(
        port_of(env_listen),
        port_of(&listen),
        "IFMATCH_LISTEN vs {config}"
    );
    assert_eq!(
        port_of(env_admin),
        port_of(&admin),
        "IFMATCH_ADMIN_LISTEN vs {config}"
    );
    assert!(
        !is_loopback(env_listen),
        "the data plane must be reachable: {env_listen}"
    );
    assert_eq!(
        BTreeSet::from_iter(image.expose.iter().copied()),
        BTreeSet::from([port_of(env_listen), port_of(env_admin)]),
        "EXPOSE"
    );

    // HEALTHCHECK and ENTRYPOINT run subcommands that exist.
    assert_eq!(image.entrypoint, ["ifmatch"]);
    assert_eq!(
        image.healthcheck.first().map(String::as_str),
        Some("ifmatch")
    );
    let mut help = image.healthcheck[1..].to_vec();
    help.push("--help".to_owned());
    let help: Vec<&str> = help.iter().map(String::as_str).collect();
    let (ok, out) = ifmatch(&help);
    assert!(ok, "HEALTHCHECK {:?}: {out}", image.healthcheck);
}

// ---------------------------------------------------------------------------------------------
// The compose file.

fn yaml_documents(path: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&read(path))
        .map(|document| {
            let mut value = Value::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}"));
            value.apply_merge().unwrap();
            value
        })
        .collect()
}

fn str_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_sequence)
        .map(|items| items.iter().map(str_of).collect())
        .unwrap_or_default()
}

/// `${VAR:-default}` as compose would expand it with VAR unset.
fn expand(value: &str) -> String {
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        Some(inner) => inner.split_once(":-").map_or("", |(_, d)| d).to_owned(),
        None => value.to_owned(),
    }
}

/// What a service runs, as far as these checks care.
#[derive(Debug)]
struct Service {
    image: String,
    /// The arguments after the entrypoint.
    command: Vec<String>,
    env: BTreeMap<String, String>,
    /// Container ports published.
    published: Vec<u16>,
    depends_on: Vec<String>,
}

impl Service {
    /// The ifmatch proxy (not the demo API run from the same image, nor another image).
    fn is_proxy(&self) -> bool {
        self.image.starts_with("ifmatch") && self.command.is_empty()
    }

    /// The port of the demo API this service runs, if it does.
    fn api_port(&self) -> Option<u16> {
        let at = self.command.iter().position(|a| a == "--api-listen")?;
        Some(port_of(&self.command[at + 1]))
    }
}

fn compose_services() -> BTreeMap<String, Service> {
    let compose = yaml_documents("docker/compose.yaml").remove(0);
    let services = compose["services"].as_mapping().expect("services");
    services
        .iter()
        .map(|(name, service)| {
            let env = service
                .get("environment")
                .and_then(Value::as_mapping)
                .map(|env| {
                    env.iter()
                        .map(|(k, v)| (str_of(k), expand(&str_of(v))))
                        .collect()
                })
                .unwrap_or_default();
            let published = strings(service.get("ports"))
                .iter()
                .map(|p| p.rsplit(':').next().unwrap().parse().unwrap())
                .collect();
            let service = Service {
                image: service.get("image").map(str_of).unwrap_or_default(),
                command: strings(service.get("command")),
                env,
                published,
                depends_on: strings(service.get("depends_on")),
            };
            (str_of(name), service)
        })
        .collect()
}

/// `http://host:port` or `redis://host:port` -> (host, port).
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").expect("a URL").1;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .expect("host:port");
    (host.to_owned(), port.parse().unwrap())
}

#[test]
fn the_compose_file_is_consistent() {
    let services = compose_services();
    let known = known_env();
    let image = image();
    let (file_listen, file_admin) = listeners(&image_config(&image));
    let proxies: Vec<(&String, &Service)> = services.iter().filter(|(_, s)| s.is_proxy()).collect();
    assert!(proxies.len() >= 2, "{services:?}");

    for (name, service) in &services {
        for dependency in &service.depends_on {
            assert!(
                services.contains_key(dependency),
                "{name} depends on unknown {dependency}"
            );
        }
        if service.image.starts_with("ifmatch") && !service.command.is_empty() {
            // A subcommand of the image: every flag it passes exists.
            let (ok, help) = ifmatch(&[&service.command[0], "--help"]);
            assert!(ok, "{name}: {help}");
            for flag in service.command.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    help.contains(flag.as_str()),
                    "{name}: {flag} is not a flag of {}",
                    service.command[0]
                );
            }
        }
    }

    for (name, service) in &proxies {
        for var in service.env.keys() {
            assert!(
                known.contains(var),
                "{name}: {var} is not a setting ifmatch reads"
            );
        }
        let env =
            |var: &str, default: &str| service.env.get(var).cloned().unwrap_or(default.to_owned());
        let listen = env(
            "IFMATCH_LISTEN",
            image.env.get("IFMATCH_LISTEN").unwrap_or(&file_listen),
        );
        let admin = env(
            "IFMATCH_ADMIN_LISTEN",
            image.env.get("IFMATCH_ADMIN_LISTEN").unwrap_or(&file_admin),
        );
        for port in &service.published {
            assert!(
                [port_of(&listen), port_of(&admin)].contains(port),
                "{name} publishes {port}, but listens on {listen} and {admin}"
            );
        }
        if !is_loopback(&admin) {
            assert!(
                service
                    .env
                    .get("IFMATCH_ADMIN_TOKEN")
                    .is_some_and(|t| !t.is_empty()),
                "{name}: an open admin listener needs IFMATCH_ADMIN_TOKEN"
            );
        }
        // The upstream is a service of this file that serves on that port.
        let upstream = service
            .env
            .get("IFMATCH_UPSTREAM")
            .expect("IFMATCH_UPSTREAM");
        let (host, port) = host_port(upstream);
        let api = services
            .get(&host)
            .unwrap_or_else(|| panic!("{name}: no service {host}"));
        assert_eq!(api.api_port(), Some(port), "{name}: {upstream}");
        assert!(
            service.depends_on.contains(&host),
            "{name} does not depend on {host}"
        );
        if let Some(store) = service.env.get("IFMATCH_STORE") {
            let (host, _) = host_port(store);
            let backend = &services
                .get(&host)
                .unwrap_or_else(|| panic!("{name}: no service {host}"))
                .image;
            assert!(
                backend.contains("valkey") || backend.contains("redis"),
                "{name}: {store} is {backend}"
            );
            assert!(
                service.depends_on.contains(&host),
                "{name} does not depend on {host}"
            );
        }
    }

    // Proxies in front of the same API must share one Redis/Valkey store: with separate
    // stores, writes through one would bypass the others' checks.
    let mut by_upstream: BTreeMap<&str, Vec<(&String, Option<&String>)>> = BTreeMap::new();
    for (name, service) in &proxies {
        by_upstream
            .entry(&service.env["IFMATCH_UPSTREAM"])
            .or_default()
            .push((name, service.env.get("IFMATCH_STORE")));
    }
    for (upstream, fronts) in by_upstream {
        if fronts.len() > 1 {
            let stores: BTreeSet<Option<&String>> = fronts.iter().map(|(_, s)| *s).collect();
            assert!(
                stores.len() == 1
                    && stores
                        .iter()
                        .all(|s| s.is_some_and(|s| s.starts_with("redis://"))),
                "{fronts:?} front {upstream} without sharing one Redis/Valkey store"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes manifest.

#[test]
fn the_kubernetes_manifest_is_consistent() {
    let documents = yaml_documents("docker/k8s-sidecar.yaml");
    let known = known_env();
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_owned();
    let secrets: Vec<&Value> = documents.iter().filter(|d| kind(d) == "Secret").collect();
    let deployments: Vec<&Value> = documents
        .iter()
        .filter(|d| kind(d) == "Deployment")
        .collect();
    assert_eq!(deployments.len(), 1);
    let deployment = deployments[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");

    let mut stores = Vec::new();
    let mut api_port = None;
    let mut upstream = None;
    for container in containers {
        let name = str_of(&container["name"]);
        assert!(
            container.get("imagePullPolicy").is_some(),
            "{name}: no imagePullPolicy (a :latest image is then pulled Always)"
        );
        let args = strings(container.get("args"));
        if let Some(at) = args.iter().position(|a| a == "--api-listen") {
            api_port = Some(port_of(&args[at + 1]));
        }
        let mut env = BTreeMap::new();
        for var in container
            .get("env")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let var_name = str_of(&var["name"]);
            assert!(
                known.contains(&var_name),
                "{name}: {var_name} is not a setting ifmatch reads"
            );
            if let Some(reference) = var.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                let (secret, key) = (str_of(&reference["name"]), str_of(&reference["key"]));
                assert!(
                    secrets
                        .iter()
                        .any(|s| str_of(&s["metadata"]["name"]) == secret
                            && s["stringData"].get(key.as_str()).is_some()),
                    "{name}: {var_name} refers to a missing secret {secret}/{key}"
                );
                env.insert(var_name, "<secret>".to_owned());
            } else {
                env.insert(var_name, str_of(&var["value"]));
            }
        }
        if !args.is_empty() {
            continue;
        }
        // The proxy: its ports are its listeners, its probes hit the admin port.
        let ports: BTreeMap<String, u16> = container["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    str_of(&p["name"]),
                    p["containerPort"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        assert_eq!(
            ports.get("http"),
            env.get("IFMATCH_LISTEN").map(|a| port_of(a)).as_ref()
        );
        let admin = env
            .get("IFMATCH_ADMIN_LISTEN")
            .expect("IFMATCH_ADMIN_LISTEN");
        assert_eq!(ports.get("admin"), Some(&port_of(admin)));
        if !is_loopback(admin) {
            assert!(
                env.contains_key("IFMATCH_ADMIN_TOKEN"),
                "open admin listener without a token"
            );
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(str_of(&get["path"]), path, "{probe}");
            assert_eq!(str_of(&get["port"]), "admin", "{probe}");
        }
        upstream = env.get("IFMATCH_UPSTREAM").cloned();
        stores.extend(env.get("IFMATCH_STORE").cloned());
    }
    // The sidecar reaches the app in its pod.
    let upstream = upstream.expect("the proxy's IFMATCH_UPSTREAM");
    assert_eq!(
        host_port(&upstream),
        ("127.0.0.1".to_owned(), api_port.expect("the app's port"))
    );

    // More than one replica needs a store they share.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    if replicas > 1 {
        assert!(
            stores.iter().any(|s| s.starts_with("redis://")),
            "{replicas} replicas, each with its own memory store"
        );
    }

    // The Service targets a named port of the pod.
    for service in documents.iter().filter(|d| kind(d) == "Service") {
        for port in service["spec"]["ports"].as_sequence().unwrap() {
            let target = str_of(&port["targetPort"]);
            assert!(
                containers.iter().any(|c| c["ports"]
                    .as_sequence()
                    .is_some_and(|ps| ps.iter().any(|p| str_of(&p["name"]) == target))),
                "Service targetPort {target} is no container's port"
            );
        }
    }
}

/// The configs shipped beside the annotated one run as they are: `config/demo.toml` points at
/// the demo API's default address, and its listeners are the defaults the README uses.
#[test]
fn the_demo_config_fronts_the_demo_api() {
    let (ok, out) = ifmatch(&["check-config", "config/demo.toml"]);
    assert!(ok, "{out}");
    let (_, help) = ifmatch(&["demo", "--help"]);
    let api_default = help
        .split("--api-listen <ADDR>")
        .nth(1)
        .and_then(|rest| rest.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .expect("demo --api-listen default");
    let config = ifmatch::config::Config::load(
        Path::new(&root().join("config/demo.toml")),
        &ifmatch::config::Overrides::default(),
    )
    .unwrap();
    for route in config.routes().unwrap() {
        assert_eq!(route.upstream.as_str(), api_default, "route {}", route.id);
    }
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
}
